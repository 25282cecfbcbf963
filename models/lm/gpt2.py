"""GPT-2 from Hugging Face checkpoints (docs/method.md 4.4) and its ``--model=gpt2`` family.

Hugging Face stores GPT-2's linear maps as ``Conv1D`` weights of shape ``(in, out)`` (``x W + b``)
and fuses the query, key and value projections into one ``c_attn`` of width ``3 d``; the
conversion splits them and reshapes them into TransformerLens's per-head layout. The unembedding
is tied to the token embedding and has no bias.
"""

from __future__ import annotations

import numpy as np

from models.common import transformer
from models.common.hf import check_architecture, split_heads
from models.lm import model as lm
from models.lm.family import LMFamily

WHAT = "GPT-2"
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints
UNDERSTOOD = ("n_embd", "n_head", "n_layer", "n_inner", "vocab_size", "n_positions", "n_ctx",
              "activation_function", "layer_norm_epsilon", "scale_attn_weights",
              "tie_word_embeddings", "reorder_and_upcast_attn",  # upcasting: no change in float32+
              "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type", "summary_use_proj",
              "summary_activation", "summary_first_dropout", "summary_proj_to_labels")
REQUIRED = {"scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
            "is_encoder_decoder": False, "pruned_heads": {}}


def config(hf: dict) -> transformer.TransformerConfig:
    """The architecture of a Hugging Face ``gpt2`` ``config.json``."""
    check_architecture(hf, ("gpt2",), WHAT, UNDERSTOOD, REQUIRED,
                       ("n_embd", "n_head", "n_layer", "vocab_size", "n_positions"))
    d, h = split_heads(hf, WHAT, "n_embd", "n_head")
    return transformer.TransformerConfig(
        n_layers=hf["n_layer"], d_model=d, n_heads=h, d_head=d // h,
        d_mlp=hf.get("n_inner") or 4 * d, d_vocab=hf["vocab_size"], n_ctx=hf["n_positions"],
        act_fn=lm.activation(hf.get("activation_function", "gelu_new"), WHAT),
        normalization="LN", ln_eps=hf.get("layer_norm_epsilon", 1e-5),
        use_attn_scale=hf.get("scale_attn_weights", True))


def to_tl(weights: dict, cfg: transformer.TransformerConfig) -> dict:
    """Hugging Face GPT-2 tensors -> TransformerLens-named weights (before processing)."""
    w = lm.HFWeights(weights, WHAT, BUFFERS)
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    tl = {"embed.W_E": w.take("wte.weight", (cfg.d_vocab, d)),
          "pos_embed.W_pos": w.take("wpe.weight", (None, d))}
    for layer in range(cfg.n_layers):
        src, dst = f"h.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            tl[dst + ours + ".w"] = w.take(src + theirs + ".weight", (d,))
            tl[dst + ours + ".b"] = w.take(src + theirs + ".bias", (d,))
        qkv = np.split(w.take(src + "attn.c_attn.weight", (d, 3 * h * dh)), 3, axis=1)
        qkv_bias = np.split(w.take(src + "attn.c_attn.bias", (3 * h * dh,)), 3)
        for name, weight, bias in zip("QKV", qkv, qkv_bias):
            tl[dst + f"attn.W_{name}"] = lm.heads_in(weight, h)
            tl[dst + f"attn.b_{name}"] = bias.reshape(h, dh)
        tl[dst + "attn.W_O"] = w.take(src + "attn.c_proj.weight", (h * dh, d)).reshape(h, dh, d)
        tl[dst + "attn.b_O"] = w.take(src + "attn.c_proj.bias", (d,))
        w.mlp(src, dst, tl, out_in=False, d=d, m=cfg.d_mlp)
    return w.finish(tl, cfg.d_vocab)


FAMILY = LMFamily(
    name="gpt2", label=WHAT, config_from_hf=config, to_tl=to_tl, default_checkpoint="gpt2",
    # docs/method.md 5: openwebtext tokenised for GPT-2, 500 samples for the bases and edges and 50
    # 000 for the Grams, 1024 tokens each.
    default_dataset="apollo-research/Skylion007-openwebtext-tokenizer-gpt2", n_ctx=None,
    max_ctx=None, n_samples=500, n_gram_samples=50_000,
    batch_sizes={"batch_size": 3, "gram_batch_size": 4, "edge_batch_size": 3})
