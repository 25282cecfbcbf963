"""Malformed checkpoints and corpora end in a clear error, never a traceback (issue 23.1, 23.2,
22.6).

Each class of bad input goes once through ``scripts/compute_basis.py`` as a user runs it: exit
status 2, a message naming what is wrong and what to do, no traceback, nothing written. The other
instances of each class are checked in-process on the functions the script calls:

* a tensor whose shape does not fit the config (GPT-2's fused ``c_attn``, Llama's ``k_proj``,
  GPT-NeoX's ``query_key_value``), caught before any split or reshape;
* a config that cannot describe a model (a head count not dividing the width, a size that is not a
  positive integer);
* a config attribute the converter does not know (one policy for every converter), and a Llama
  config whose legacy ``rope_scaling`` scales what ``rope_parameters`` leaves unscaled;
* a weight file that is not a checkpoint (``pytorch_model.bin`` of random bytes or of a pickled
  object, a corrupt safetensors index);
* a ``.npy`` corpus file of pickled objects;
* a text corpus with a checkpoint that has no tokenizer files (transformers would build an empty
  tokenizer and turn every document into a lone EOS).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from libjax.errors import CheckpointError, DataError
from models.common import hf, text
from models.lm import gpt2, gptneo, llama, pythia
from tests.helpers import hf_tiny
from tests.helpers.script_runs import run_script

LLAMA_CONFIG = {"model_type": "llama", "vocab_size": hf_tiny.VOCAB, "hidden_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 24, "max_position_embeddings": hf_tiny.N_POSITIONS,
                "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0,
                "eos_token_id": 0,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}}
PYTHIA_CONFIG = {"model_type": "gpt_neox", "vocab_size": hf_tiny.VOCAB, "hidden_size": 16,
                 "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 32,
                 "max_position_embeddings": hf_tiny.N_POSITIONS, "rotary_pct": 0.5,
                 "layer_norm_eps": 1e-5, "use_parallel_residual": True, "eos_token_id": 0}


def _llama(directory: Path, config: dict = LLAMA_CONFIG) -> Path:
    """A random one-block Llama checkpoint (16 wide, 4 heads, 2 key/value heads), no torch."""
    d, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    dh = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * dh
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    block = "model.layers.0."
    shapes.update({block + "input_layernorm.weight": (d,),
                   block + "post_attention_layernorm.weight": (d,),
                   block + "self_attn.q_proj.weight": (d, d),
                   block + "self_attn.k_proj.weight": (kv, d),
                   block + "self_attn.v_proj.weight": (kv, d),
                   block + "self_attn.o_proj.weight": (d, d),
                   block + "mlp.gate_proj.weight": (m, d), block + "mlp.up_proj.weight": (m, d),
                   block + "mlp.down_proj.weight": (d, m)})
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
              str(directory / hf.SAFETENSORS))
    (directory / hf.CONFIG).write_text(json.dumps(config))
    return directory


def _edit_weight(directory: Path, name: str, value: np.ndarray) -> None:
    weights = load_file(str(directory / hf.SAFETENSORS))
    weights[name] = value
    save_file(weights, str(directory / hf.SAFETENSORS))


def _tokens(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "tokens.npy", np.random.default_rng(0).integers(0, hf_tiny.VOCAB, 4096))
    return data


def _refused(tmp_path: Path, model: str, checkpoint: Path, data: Path, *words: str) -> None:
    """compute_basis on ``checkpoint`` and ``data`` exits with status 2 and a message holding
    ``words``, without a traceback, and writes nothing."""
    out = tmp_path / "out"
    run = run_script("compute_basis.py", f"--model={model}", f"--checkpoint={checkpoint}",
                     f"--data_dir={data}", "--layer=0", "--n_ctx=8", "--n_samples=4",
                     "--n_gram_samples=4", f"--out_dir={out}", timeout=180)
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for word in words:
        assert word in run.stderr, (word, run.stderr[-2000:])
    assert not out.exists() or not any(out.iterdir())


# --- through the command line: one run per class --------------------------------------------------

def test_cli_tensor_of_the_wrong_shape(tmp_path):
    ckpt = tmp_path / "gpt2"
    hf_tiny.gpt2_numpy(ckpt)  # n_embd 16: c_attn is (16, 48)
    _edit_weight(ckpt, "transformer.h.0.attn.c_attn.weight", np.zeros((16, 45), np.float32))
    _refused(tmp_path, "gpt2", ckpt, _tokens(tmp_path), "'h.0.attn.c_attn.weight'", "(16, 45)",
             "(16, 48)")


def test_cli_config_that_cannot_describe_a_model(tmp_path):
    ckpt = tmp_path / "llama"
    _llama(ckpt, {**LLAMA_CONFIG, "num_attention_heads": 3, "num_key_value_heads": 3})
    _refused(tmp_path, "llama", ckpt, _tokens(tmp_path), "hidden_size=16",
             "num_attention_heads=3")


def test_cli_config_attribute_that_may_change_the_model(tmp_path):
    ckpt = tmp_path / "llama"
    _llama(ckpt, {**LLAMA_CONFIG, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    _refused(tmp_path, "llama", ckpt, _tokens(tmp_path), "'linear'", "not supported")


@pytest.mark.slow  # PyTorch's import in the script: ~45 s on two busy cores
def test_cli_weight_file_that_is_not_a_checkpoint(tmp_path):
    pytest.importorskip("torch")
    ckpt = tmp_path / "gpt2"
    hf_tiny.gpt2_numpy(ckpt)
    (ckpt / hf.SAFETENSORS).unlink()
    (ckpt / hf.TORCH_BIN).write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(tmp_path, "gpt2", ckpt, _tokens(tmp_path), str(ckpt / hf.TORCH_BIN),
             "not a readable PyTorch checkpoint")


def test_cli_npy_corpus_of_pickled_objects(tmp_path):
    ckpt = tmp_path / "gpt2"
    hf_tiny.gpt2_numpy(ckpt)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "tokens.npy", np.array([{"ids": [1, 2, 3]}], dtype=object), allow_pickle=True)
    _refused(tmp_path, "gpt2", ckpt, data, "tokens.npy", "pickled Python objects")


def test_cli_text_corpus_without_a_tokenizer(tmp_path):
    ckpt = tmp_path / "gpt2"
    hf_tiny.gpt2_numpy(ckpt)  # weights and config, no tokenizer files
    data = tmp_path / "data"
    data.mkdir()
    (data / "story.txt").write_text(" ".join(hf_tiny.CORPUS) * 20)
    _refused(tmp_path, "gpt2", ckpt, data, "no tokenizer files", "tokenizer.json")


# --- the other instances, in-process --------------------------------------------------------------

def test_every_tensor_shape_is_checked_before_it_is_split(tmp_path):
    ckpt = _llama(tmp_path / "llama")
    cfg = llama.config(hf.read_config(ckpt))
    weights = hf.read_weights(ckpt)
    bad = dict(weights, **{"model.layers.0.self_attn.k_proj.weight": np.zeros((12, 16))})
    with pytest.raises(CheckpointError, match=r"k_proj.weight'.*\(12, 16\).*\(8, 16\)"):
        llama.to_tl(bad, cfg)
    bad = dict(weights, **{"model.layers.0.mlp.down_proj.weight": np.zeros((24, 16))})
    with pytest.raises(CheckpointError, match=r"down_proj.weight'.*\(24, 16\).*\(16, 24\)"):
        llama.to_tl(bad, cfg)
    # GPT-NeoX's fused projection: (3 * 16, 16), here one head short
    cfg = pythia.config(PYTHIA_CONFIG)
    with pytest.raises(CheckpointError, match=r"query_key_value.weight'.*\(36, 16\).*\(48, 16\)"):
        pythia.to_tl({"gpt_neox.embed_in.weight": np.zeros((hf_tiny.VOCAB, 16)),
                      "gpt_neox.layers.0.input_layernorm.weight": np.ones(16),
                      "gpt_neox.layers.0.input_layernorm.bias": np.zeros(16),
                      "gpt_neox.layers.0.post_attention_layernorm.weight": np.ones(16),
                      "gpt_neox.layers.0.post_attention_layernorm.bias": np.zeros(16),
                      "gpt_neox.layers.0.attention.query_key_value.weight": np.zeros((36, 16))},
                     cfg)


@pytest.mark.parametrize("convert, config, words", [
    (gpt2.config, {"n_embd": 16, "n_head": 5}, "n_embd=16 does not split into n_head=5"),
    (gpt2.config, {"n_layer": 0}, "n_layer=0"),
    (gpt2.config, {"n_embd": "16"}, "n_embd='16'"),
    (gptneo.config, {"num_heads": 3}, "hidden_size=16 does not split into num_heads=3"),
    (pythia.config, {"num_attention_heads": 3}, "does not split"),
    (pythia.config, {"vocab_size": None}, "lacks vocab_size"),
    (llama.config, {"num_key_value_heads": 3}, "cannot share 3"),
])
def test_configs_that_cannot_describe_a_model(convert, config, words):
    base = {gpt2.config: {"model_type": "gpt2", "n_embd": 16, "n_head": 4, "n_layer": 1,
                          "vocab_size": 64, "n_positions": 16},
            gptneo.config: {"model_type": "gpt_neo", "hidden_size": 16, "num_heads": 4,
                            "num_layers": 1, "vocab_size": 64, "max_position_embeddings": 16,
                            "attention_layers": ["global"]},
            pythia.config: PYTHIA_CONFIG, llama.config: LLAMA_CONFIG}[convert]
    with pytest.raises(CheckpointError, match=words):
        convert({**base, **config})


GENERIC_EXTRAS = {"unk_token_id": 0, "pad_token_id": 0, "torch_dtype": "bfloat16",
                  "transformers_version": "4.46.0", "architectures": ["X"], "use_cache": True,
                  "tokenizer_class": "GPT2Tokenizer", "temperature": 0.7, "is_decoder": True}


@pytest.mark.parametrize("convert, base", [
    (pythia.config, PYTHIA_CONFIG), (llama.config, LLAMA_CONFIG),
    (gpt2.config, {"model_type": "gpt2", "n_embd": 16, "n_head": 4, "n_layer": 1,
                   "vocab_size": 64, "n_positions": 16}),
    (gptneo.config, {"model_type": "gpt_neo", "hidden_size": 16, "num_heads": 4, "num_layers": 1,
                     "vocab_size": 64, "max_position_embeddings": 16,
                     "attention_layers": ["global"]})])
def test_one_allow_list_policy_for_every_converter(convert, base):
    """Attributes that cannot change the computation (token ids, dtype, generation and tokenizer
    settings) are accepted by every converter, and change nothing; an unknown one is refused by
    name by every converter."""
    assert convert({**base, **GENERIC_EXTRAS}) == convert(base)
    with pytest.raises(CheckpointError, match="qk_layernorm"):
        convert({**base, "qk_layernorm": True})


# HuggingFaceTB/SmolLM2-135M's config.json (the llama family's default checkpoint), as on the hub
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
    "is_llama_config": True, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
    "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "vocab_size": 49152}


def test_the_llama_familys_default_checkpoint_config_is_read():
    cfg = llama.config(SMOLLM2_CONFIG)
    assert (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.rotary_base) == \
        (576, 9, 3, 64, 100000.0)
    with pytest.raises(CheckpointError, match="rope_interleaved=True"):
        llama.config({**SMOLLM2_CONFIG, "rope_interleaved": True})


def test_legacy_rope_scaling_is_read_as_transformers_reads_it():
    """transformers 5 takes ``rope_scaling`` before ``rope_parameters``: a scaled legacy entry
    next to a default ``rope_parameters`` is a scaled model (refused), and a default legacy entry
    gives its own theta."""
    scaled = {**LLAMA_CONFIG, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    with pytest.raises(CheckpointError, match="'dynamic'"):
        llama.config(scaled)
    legacy = {**LLAMA_CONFIG, "rope_scaling": {"rope_type": "default", "rope_theta": 500.0}}
    assert llama.config(legacy).rotary_base == 500.0
    top = {k: v for k, v in LLAMA_CONFIG.items() if k != "rope_parameters"}
    assert llama.config({**top, "rope_theta": 250.0}).rotary_base == 250.0
    with pytest.raises(CheckpointError, match="partial_rotary_factor"):
        llama.config({**LLAMA_CONFIG, "partial_rotary_factor": 0.5})


def test_transformers_reads_those_configs_the_same_way():
    transformers = pytest.importorskip("transformers")
    for extra, theta in (({"rope_scaling": {"rope_type": "default", "rope_theta": 500.0}}, 500.0),
                         ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, None)):
        config = transformers.LlamaConfig(**{**LLAMA_CONFIG, **extra})
        kind = config.rope_parameters["rope_type"]
        assert (kind == "default") == (theta is not None)
        if theta is not None:
            assert config.rope_parameters["rope_theta"] == theta


def test_unreadable_weight_files(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "gpt2"
    hf_tiny.gpt2_numpy(ckpt)
    (ckpt / hf.SAFETENSORS).unlink()
    (ckpt / hf.TORCH_BIN).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        hf.read_weights(ckpt)
    torch.save([1, 2, 3], ckpt / hf.TORCH_BIN)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        hf.read_weights(ckpt)
    (ckpt / hf.TORCH_BIN).unlink()
    (ckpt / hf.SAFETENSORS_INDEX).write_text('{"weights": 1}')
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        hf.read_weights(ckpt)
    (ckpt / hf.CONFIG).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not the object"):
        hf.read_config(ckpt)


def test_bfloat16_safetensors_read_exactly(tmp_path):
    """Many hub checkpoints are bfloat16 safetensors, which safetensors.numpy cannot read:
    they load widened to float32, value for value."""
    import ml_dtypes

    values = {"a": np.arange(-3, 3, 0.5).reshape(3, 4).astype(ml_dtypes.bfloat16),
              "b": np.linspace(0, 1, 5).astype(np.float32)}
    header, offset, blobs = {}, 0, []
    for name, value in values.items():
        blob = value.tobytes()
        header[name] = {"dtype": "BF16" if value.dtype == ml_dtypes.bfloat16 else "F32",
                        "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    header = len(head).to_bytes(8, "little") + head
    (tmp_path / hf.SAFETENSORS).write_bytes(header + b"".join(blobs))
    weights = hf.read_weights(tmp_path)
    assert weights["a"].dtype == np.float32
    np.testing.assert_array_equal(weights["a"], values["a"].astype(np.float32))
    np.testing.assert_array_equal(weights["b"], values["b"])


def test_npy_corpus_files_that_are_not_token_arrays(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable .npy"):
        list(text.local_corpus(tmp_path / "a.npy"))
    np.savez(tmp_path / "b.npz", ids=np.arange(3))
    (tmp_path / "b.npz").rename(tmp_path / "b.npy")
    with pytest.raises(DataError, match="npz archive"):
        list(text.local_corpus(tmp_path / "b.npy"))


def test_text_corpus_files_that_are_not_utf8(tmp_path):
    for name in ("a.txt", "b.jsonl"):
        (tmp_path / name).write_bytes(b'"caf\xe9"\n')
        with pytest.raises(DataError, match="not UTF-8"):
            list(text.local_corpus(tmp_path / name))


def test_a_tokenizer_that_yields_no_tokens_is_refused():
    with pytest.raises(DataError, match="into no tokens"):
        text.token_stream(["some text", "more"], lambda: (lambda texts: [[] for _ in texts]), 0)
    # blank documents may encode to nothing
    tokens = text.token_stream(["  ", "ab"], lambda: (lambda texts: [[] if not t.strip() else [5]
                                                                      for t in texts]), 0)
    assert tokens.tolist() == [0, 5, 0]
