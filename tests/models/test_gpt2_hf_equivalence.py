"""GPT-2 and GPT-Neo in JAX equal Hugging Face transformers (PyTorch, CPU) on tiny random models.

Four levels, each in float32 (atol 1e-5) and float64 (atol 1e-10):
* the converted, unprocessed model (:class:`models.lm.model.LanguageModel`) gives HF's logits;
* after TransformerLens's weight processing it gives HF's logits minus their mean over the
  vocabulary (the unembedding is centred);
* so does the bias-folded, sectioned model that ``--model=gpt2`` / ``tinystories-1m`` load;
* at every node layer the activations are HF's: residual streams minus their mean over d_model
  (centred writing weights) plus the constant 1, LayerNorm variances, and normalised vectors that
  HF's LayerNorm outputs once its scale and shift are applied.

HF's GPT-Neo computes attention scores in float32 even in a float64 model; the float64 GPT-Neo
comparisons patch that cast out (:func:`_attn_in_model_dtype`).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from models.common import transformer  # noqa: E402
from models.lm import gpt2, gptneo  # noqa: E402
from models.lm import model as lm  # noqa: E402
from tests.helpers import hf_tiny  # noqa: E402
from tests.helpers.hf_equivalence import (  # noqa
    N_POS,
    TOL,
    assert_bin_loads_like_safetensors,
    assert_logits_at_every_level,
    hf_run,
    ours,
)

ARCHS = {"gpt2": (hf_tiny.gpt2, gpt2), "gptneo": (hf_tiny.gptneo, gptneo)}
FAMILIES = {"gpt2": gpt2.FAMILY, "gptneo": gptneo.FAMILY}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (checkpoint directory, torch model)."""
    out = {}
    for name, (make, _) in ARCHS.items():
        directory = tmp_path_factory.mktemp(name)
        out[name] = (directory, make(directory))
    return out


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, hf_tiny.VOCAB, (3, N_POS))


def _attn_in_model_dtype(self, query, key, value, attention_mask=None):
    """HF GPT-Neo's eager attention without its cast of queries and keys to float32."""
    scores = query @ key.transpose(-1, -2)
    q_len, k_len = query.size(-2), key.size(-2)
    causal = self.bias[:, :, k_len - q_len:k_len, :k_len]
    scores = torch.where(causal, scores, torch.finfo(scores.dtype).min)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def hf_layer_norms(model, tokens, dtype, monkeypatch):
    """HF logits and, per LayerNorm module name, its (input, output), in ``dtype``."""
    if dtype == np.float64:
        from transformers.models.gpt_neo import modeling_gpt_neo
        monkeypatch.setattr(modeling_gpt_neo.GPTNeoSelfAttention, "_attn", _attn_in_model_dtype)
    return hf_run(model, tokens, dtype, lambda _, m: isinstance(m, torch.nn.LayerNorm))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ARCHS)
def test_logits_equal_hf_before_and_after_processing(name, dtype, checkpoints, tokens, monkeypatch):
    directory, model = checkpoints[name]
    logits, _ = hf_layer_norms(model, tokens, dtype, monkeypatch)
    cfg, tl = ours(directory, ARCHS[name][1])
    assert_logits_at_every_level(logits, cfg, tl, lm.LanguageModel, FAMILIES[name], directory,
                                 tokens, dtype)


@pytest.mark.parametrize("name", ARCHS)
def test_node_layer_activations_equal_hf(name, checkpoints, tokens, monkeypatch):
    directory, model = checkpoints[name]
    logits, seen = hf_layer_norms(model, tokens, np.float64, monkeypatch)
    cfg, tl = ours(directory, ARCHS[name][1])
    # every module point
    node_layers = tuple(mid for mid, _ in transformer.modules(cfg)[2:]) + ("output",)
    folded = lm.sectioned_model(name, cfg, tl, node_layers, N_POS)
    acts = jax.jit(jax.vmap(folded.all_acts, (None, 0)))(folded.params, jnp.asarray(tokens))
    acts = dict(zip(node_layers, map(np.asarray, acts)))
    d, tol = cfg.d_model, TOL[np.float64]

    def check_ln(ln_module: str, resid_layer: str, var_layer: str, normed, ln: str):
        """Residual, variance and normalised vector around one HF LayerNorm."""
        hf_in, hf_out = seen[ln_module]
        resid = acts[resid_layer]
        np.testing.assert_array_equal(resid[..., -1], 1.0)
        np.testing.assert_allclose(resid[..., :d], hf_in - hf_in.mean(-1, keepdims=True), atol=tol)
        np.testing.assert_allclose(acts[var_layer][..., 0], hf_in.var(-1), atol=tol)
        np.testing.assert_array_equal(normed[..., d], 1.0)
        affine = normed[..., :d] * tl[ln + ".w"] + tl[ln + ".b"]
        np.testing.assert_allclose(affine, hf_out, atol=tol)

    for layer in range(cfg.n_layers):
        hf_block, block = f"transformer.h.{layer}.", f"blocks.{layer}."
        check_ln(hf_block + "ln_1", f"ln1.{layer}", f"ln1_out.{layer}",
                 acts[f"attn_in.{layer}"][..., :d + 1], block + "ln1")
        np.testing.assert_array_equal(acts[f"attn_in.{layer}"][..., d + 1:], acts[f"ln1.{layer}"])
        check_ln(hf_block + "ln_2", f"ln2.{layer}", f"ln2_out.{layer}",
                 acts[f"mlp_in.{layer}"][..., :d + 1], block + "ln2")
    check_ln("transformer.ln_f", "ln_final", "ln_final_out", acts["unembed"], "ln_final")
    np.testing.assert_allclose(acts["output"], logits - logits.mean(-1, keepdims=True), atol=tol)


def test_numpy_written_checkpoint_is_hf_format(tmp_path, tokens):
    """The torch-free test checkpoints (``hf_tiny.gpt2_numpy``) load in transformers unchanged."""
    hf_tiny.gpt2_numpy(tmp_path)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager")
    with torch.no_grad():
        logits = model.eval()(torch.tensor(tokens)).logits.numpy()
    cfg, tl = ours(tmp_path, gpt2)
    mine = jax.jit(lm.LanguageModel(cfg).apply)(
        {"params": {k: jnp.asarray(v) for k, v in tl.items()}}, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(mine), logits, atol=1e-5)


def test_pytorch_bin_checkpoint_gives_the_same_weights(checkpoints, tmp_path):
    directory, model = checkpoints["gpt2"]
    assert_bin_loads_like_safetensors(directory, model, gpt2, tmp_path)
