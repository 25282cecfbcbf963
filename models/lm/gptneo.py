"""GPT-Neo from Hugging Face checkpoints (docs/method.md 4.4) and the ``--model=tinystories-1m``
family.

GPT-Neo differs from GPT-2 in three ways that matter here: attention scores are not scaled by
``1/sqrt(d_head)``; layers listed as ``local`` in the config (TinyStories: the odd ones) attend
only to the last ``window_size`` (256) positions; and its projections are ``nn.Linear`` weights of
shape ``(out, in)``, with separate query/key/value maps without biases and an output map with one.
"""

from __future__ import annotations

import numpy as np

from libjax.errors import CheckpointError
from models.common import transformer
from models.common.hf import check_architecture, split_heads
from models.lm import model as lm
from models.lm.family import LMFamily

WHAT = "GPT-Neo"
BUFFERS = (".attn.attention.bias", ".attn.attention.masked_bias")
UNDERSTOOD = ("hidden_size", "num_heads", "num_layers", "intermediate_size", "vocab_size",
              "max_position_embeddings", "activation_function", "layer_norm_epsilon",
              "attention_layers", "attention_types", "window_size", "tie_word_embeddings",
              "attention_dropout", "embed_dropout", "resid_dropout", "classifier_dropout",
              "summary_type", "summary_use_proj", "summary_activation", "summary_first_dropout",
              "summary_proj_to_labels")
REQUIRED = {"add_cross_attention": False, "is_encoder_decoder": False, "pruned_heads": {}}


def _attention_layers(hf: dict) -> list[str]:
    """Per-layer ``global``/``local``, from ``attention_layers`` or its compressed form
    ``attention_types`` (``[[["global", "local"], 4]]``)."""
    if hf.get("attention_layers"):
        return list(hf["attention_layers"])
    return [kind for kinds, repeat in hf["attention_types"]
            for _ in range(repeat) for kind in kinds]


def config(hf: dict) -> transformer.TransformerConfig:
    """The architecture of a Hugging Face ``gpt_neo`` ``config.json``."""
    check_architecture(hf, ("gpt_neo",), WHAT, UNDERSTOOD, REQUIRED,
                       ("hidden_size", "num_heads", "num_layers", "vocab_size",
                        "max_position_embeddings"))
    d, h = split_heads(hf, WHAT, "hidden_size", "num_heads")
    kinds = _attention_layers(hf)
    if len(kinds) != hf["num_layers"] or set(kinds) - {"global", "local"}:
        raise CheckpointError(f"GPT-Neo attention layers {kinds} do not give 'global' or 'local' "
                              f"for each of the {hf['num_layers']} layers")
    return transformer.TransformerConfig(
        n_layers=hf["num_layers"], d_model=d, n_heads=h, d_head=d // h,
        d_mlp=hf.get("intermediate_size") or 4 * d, d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=lm.activation(hf.get("activation_function", "gelu_new"), WHAT),
        normalization="LN", ln_eps=hf.get("layer_norm_epsilon", 1e-5), use_attn_scale=False,
        local_attn_layers=tuple(i for i, kind in enumerate(kinds) if kind == "local"),
        local_attn_window=hf.get("window_size", 256))


def to_tl(weights: dict, cfg: transformer.TransformerConfig) -> dict:
    """Hugging Face GPT-Neo tensors -> TransformerLens-named weights (before processing)."""
    w = lm.HFWeights(weights, WHAT, BUFFERS)
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    tl = {"embed.W_E": w.take("wte.weight", (cfg.d_vocab, d)),
          "pos_embed.W_pos": w.take("wpe.weight", (None, d))}
    for layer in range(cfg.n_layers):
        src, dst = f"h.{layer}.", f"blocks.{layer}."
        attn = src + "attn.attention."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            tl[dst + ours + ".w"] = w.take(src + theirs + ".weight", (d,))
            tl[dst + ours + ".b"] = w.take(src + theirs + ".bias", (d,))
        for name in "QKV":
            weight = w.take(attn + f"{name.lower()}_proj.weight", (h * dh, d)).T  # (d, H * dh)
            tl[dst + f"attn.W_{name}"] = lm.heads_in(weight, h)
            tl[dst + f"attn.b_{name}"] = np.zeros((h, dh), weight.dtype)
        tl[dst + "attn.W_O"] = w.take(attn + "out_proj.weight", (d, h * dh)).T.reshape(h, dh, d)
        tl[dst + "attn.b_O"] = w.take(attn + "out_proj.bias", (d,))
        w.mlp(src, dst, tl, out_in=True, d=d, m=cfg.d_mlp)
    return w.finish(tl, cfg.d_vocab)


FAMILY = LMFamily(
    name="tinystories-1m", label="TinyStories-1M", config_from_hf=config, to_tl=to_tl,
    default_checkpoint="roneneldan/TinyStories-1M",
    # docs/method.md 4.4/5: the reference cuts the model's context to 511 positions and samples
    # 200-token chunks of TinyStories, 50 000 of them.
    default_dataset="roneneldan/TinyStories", n_ctx=200, max_ctx=511, n_samples=50_000,
    n_gram_samples=50_000,
    batch_sizes={"batch_size": 32, "gram_batch_size": 400, "edge_batch_size": 32})
