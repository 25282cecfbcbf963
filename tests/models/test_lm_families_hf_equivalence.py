"""Pythia (GPT-NeoX) and the Llama family in JAX equal Hugging Face transformers (PyTorch, CPU).

On tiny random checkpoints of each architecture (:mod:`hf_tiny_families`), in float32 (atol 1e-5)
and float64 (atol 1e-10):
* the converted, unprocessed model (:class:`models.lm.rotary.RotaryLanguageModel`) gives HF's
  logits;
* after weight processing (TransformerLens's for LayerNorm; scale folding for RMSNorm) it gives
  HF's logits minus their mean over the vocabulary;
* so does the bias-folded, sectioned model that ``--model=pythia`` / ``--model=llama`` load;
* at every block's node layers the activations are HF's: residual streams (minus their mean for
  LayerNorm models) with the constant 1, the normaliser's statistic, normalised vectors that
  HF's norm outputs once its scale (and shift) are applied, and in parallel blocks both residual
  copies of ``ln2`` (``resid + attn`` and the block's input).

transformers computes rotary angles, the attention softmax and RMSNorm in float32 even in a
float64 model; the float64 references patch those steps (``hf_tiny_families.float64_faithful``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from libjax.errors import CheckpointError  # noqa: E402
from models.common import hf, transformer  # noqa: E402
from models.lm import llama, pythia  # noqa: E402
from models.lm import model as lm  # noqa: E402
from models.lm import rotary as rotary_lm  # noqa: E402
from tests.helpers import hf_tiny  # noqa: E402
from tests.helpers import hf_tiny_families as tiny  # noqa: E402
from tests.helpers.hf_equivalence import (  # noqa
    N_POS,
    TOL,
    assert_bin_loads_like_safetensors,
    assert_logits_at_every_level,
    hf_run,
    ours,
)

ARCHS = {"pythia": (lambda d: tiny.pythia(d, parallel=True), pythia, pythia.FAMILY),
         "neox_sequential": (lambda d: tiny.pythia(d, parallel=False), pythia, pythia.FAMILY),
         "llama": (tiny.llama, llama, llama.FAMILY), "qwen2": (tiny.qwen2, llama, llama.FAMILY),
         "mistral": (tiny.mistral, llama, llama.FAMILY)}
# the default run: one of each structure (Mistral is Llama's code path, sequential GPT-NeoX
# Pythia's with GPT-2's block order)
SLOW = ("neox_sequential", "mistral")
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ARCHS]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (checkpoint directory, torch model)."""
    out = {}
    for name, (make, _, _) in ARCHS.items():
        directory = tmp_path_factory.mktemp(name)
        out[name] = (directory, make(directory))
    return out


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, hf_tiny.VOCAB, (3, N_POS))


def hf_norms_and_attention(model, tokens, dtype, monkeypatch):
    """HF logits and, per norm and attention module name, its (input, output), in ``dtype``."""
    if dtype == np.float64:
        tiny.float64_faithful(model, monkeypatch)
    suffixes = ("layernorm", "layer_norm", "norm", "attention", "self_attn")
    return hf_run(model, tokens, dtype, lambda name, _: name.endswith(suffixes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_hf_before_and_after_processing(name, dtype, checkpoints, tokens, monkeypatch):
    directory, model = checkpoints[name]
    logits, _ = hf_norms_and_attention(model, tokens, dtype, monkeypatch)
    _, arch, family = ARCHS[name]
    cfg, tl = ours(directory, arch)
    assert_logits_at_every_level(logits, cfg, tl, rotary_lm.RotaryLanguageModel, family,
                                 directory, tokens, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_node_layer_activations_equal_hf(name, checkpoints, tokens, monkeypatch):
    directory, model = checkpoints[name]
    logits, seen = hf_norms_and_attention(model, tokens, np.float64, monkeypatch)
    cfg, tl = ours(directory, ARCHS[name][1])
    # every module point
    node_layers = tuple([mid for mid, _ in transformer.modules(cfg)][1:]) + ("output",)
    folded = lm.sectioned_model(name, cfg, tl, node_layers, N_POS)
    acts = jax.jit(jax.vmap(folded.all_acts, (None, 0)))(folded.params, jnp.asarray(tokens))
    acts = dict(zip(node_layers, map(np.asarray, acts)))
    d, tol, rms = cfg.d_model, TOL[np.float64], cfg.normalization == "RMS"
    centre = (lambda x: x) if rms else (lambda x: x - x.mean(-1, keepdims=True))
    stat = (lambda x: (x**2).mean(-1)) if rms else (lambda x: x.var(-1))

    def check_resid(ours_, theirs):
        np.testing.assert_array_equal(ours_[..., -1], 1.0)
        np.testing.assert_allclose(ours_[..., :d], centre(theirs), atol=tol)

    def check_norm(hf_module, resid, var_layer, normed, norm):
        """Residual, statistic and normalised vector around one HF norm."""
        hf_in, hf_out = seen[hf_module]
        check_resid(resid, hf_in)
        np.testing.assert_allclose(acts[var_layer][..., 0], stat(hf_in), atol=tol)
        np.testing.assert_array_equal(normed[..., d], 1.0)
        affine = normed[..., :d] * tl[norm + ".w"] + (0 if rms else tl[norm + ".b"])
        np.testing.assert_allclose(affine, hf_out, atol=tol)

    prefix = "gpt_neox." if ARCHS[name][1] is pythia else "model."
    for layer in range(cfg.n_layers):
        hf_block, block = f"{prefix}layers.{layer}.", f"blocks.{layer}."
        check_norm(hf_block + "input_layernorm", acts[f"ln1.{layer}"], f"ln1_out.{layer}",
                   acts[f"attn_in.{layer}"][..., :d + 1], block + "ln1")
        np.testing.assert_array_equal(acts[f"attn_in.{layer}"][..., d + 1:], acts[f"ln1.{layer}"])
        ln2_resid = acts[f"ln2.{layer}"]
        if cfg.parallel_attn_mlp:  # (resid + attn, resid): both copies, HF's block input second
            attn = seen[hf_block + ("attention" if prefix == "gpt_neox." else "self_attn")][1]
            hf_input = seen[hf_block + "input_layernorm"][0]
            check_resid(ln2_resid[..., :d + 1], hf_input + attn)
            ln2_resid = ln2_resid[..., d + 1:]
        check_norm(hf_block + "post_attention_layernorm", ln2_resid, f"ln2_out.{layer}",
                   acts[f"mlp_in.{layer}"][..., :d + 1], block + "ln2")
    final = "gpt_neox.final_layer_norm" if prefix == "gpt_neox." else "model.norm"
    check_norm(final, acts["ln_final"], "ln_final_out", acts["unembed"], "ln_final")
    np.testing.assert_allclose(acts["output"], logits - logits.mean(-1, keepdims=True), atol=tol)


def test_folded_node_layer_dims(checkpoints):
    """SPEC 4.3 tuples: D = d_model + 1 per residual copy; parallel ``ln2``/``ln2_out`` carry two
    (``mlp_in`` the normed vector and ``resid + attn``), sequential blocks one."""
    layers = lm.block_node_layers(0, 2)
    dims = {}
    for name in ("pythia", "neox_sequential", "llama"):
        cfg, tl = ours(checkpoints[name][0], ARCHS[name][1])
        dims[name] = {layer.name: layer.width
                      for layer in lm.sectioned_model(name, cfg, tl, layers, N_POS).layers}
    D = 33
    assert dims["pythia"] == dict(zip(layers, (D, 1 + D, 2 * D, 2 * D, 1 + 2 * D, 2 * D, D)))
    for name in ("neox_sequential", "llama"):
        assert dims[name] == dict(zip(layers, (D, 1 + D, 2 * D, D, 1 + D, 2 * D, D)))


def test_pytorch_bin_checkpoint_gives_the_same_weights(checkpoints, tmp_path):
    directory, model = checkpoints["pythia"]
    assert_bin_loads_like_safetensors(directory, model, pythia, tmp_path)


def test_hub_style_pythia_config_is_read_like_transformers_5():
    """The hub's Pythia config.json (``rotary_pct``, ``rotary_emb_base``) and the one
    transformers 5 writes (``rope_parameters``) give the same architecture."""
    old = {"model_type": "gpt_neox", "hidden_size": 128, "num_attention_heads": 4,
           "num_hidden_layers": 6, "intermediate_size": 512, "vocab_size": 50304,
           "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
           "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    new = {k: v for k, v in old.items() if not k.startswith("rotary_")}
    new["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                              "partial_rotary_factor": 0.25}
    cfg = pythia.config(old)
    assert cfg == pythia.config(new)
    assert (cfg.d_head, cfg.rotary_dim, cfg.act_fn, cfg.parallel_attn_mlp) == (32, 8, "gelu", True)


def _llama_config(checkpoints, **changes):
    hf_config = json.loads((checkpoints["llama"][0] / hf.CONFIG).read_text())
    hf_config.update(changes)
    return hf_config


@pytest.mark.parametrize("changes, words", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "llama3"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": None}, "linear"),
    ({"attn_logit_softcapping": 30.0}, "attn_logit_softcapping"),
    ({"model_type": "qwen3"}, "qwen3"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
])
def test_llama_converter_refuses_what_it_does_not_implement(checkpoints, changes, words):
    with pytest.raises(CheckpointError, match=words):
        llama.config(_llama_config(checkpoints, **changes))


def test_mistral_window_caps_the_context(checkpoints):
    """A sliding window shorter than the model's context caps the context: there it masks
    nothing."""
    cfg = llama.config(_llama_config(checkpoints, model_type="mistral", sliding_window=8))
    assert cfg.n_ctx == 8 and cfg.local_attn_layers == ()
