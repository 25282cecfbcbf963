"""Pythia (GPT-NeoX) from Hugging Face checkpoints (SPEC 4.4) and the ``--model=pythia`` family.

GPT-NeoX differs from GPT-2 in ways that all matter here: rotary embeddings on the first
``rotary_pct`` of each query/key head (half-split convention) instead of a position embedding;
attention and MLP that, with ``use_parallel_residual`` (every Pythia), both read the block's input
residual, whose sum ``resid + attn + mlp`` is the block's output; erf GELU; an unembedding
(``embed_out``) not tied to the embedding. Its projections are ``nn.Linear`` weights ``(out, in)``,
and the fused ``query_key_value`` output is laid out head by head, ``(H, 3, dh)``.
"""

from __future__ import annotations

import numpy as np

from libjax.errors import CheckpointError
from models.common import transformer
from models.common.hf import check_architecture, split_heads
from models.lm import model as lm
from models.lm import rotary as rotary_lm
from models.lm.family import LMFamily

WHAT = "GPT-NeoX"
# causal-mask and rotary-frequency buffers that older checkpoints store
BUFFERS = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")
# config.json attributes read below, or training-only (dropout); the generic ones are hf.GENERIC
UNDERSTOOD = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
              "vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps",
              "rotary_pct", "rotary_emb_base", "rope_parameters", "rope_scaling",
              "use_parallel_residual", "tie_word_embeddings", "attention_bias",
              "attention_dropout", "hidden_dropout", "classifier_dropout",
              "attention_probs_dropout_prob", "hidden_dropout_prob")  # older dropout names
SHAPE = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
         "vocab_size", "max_position_embeddings")


def config(hf: dict) -> transformer.TransformerConfig:
    """The architecture of a Hugging Face ``gpt_neox`` ``config.json``."""
    check_architecture(hf, ("gpt_neox",), WHAT, UNDERSTOOD, sizes=SHAPE)
    d, h = split_heads(hf, WHAT, "hidden_size", "num_attention_heads")
    theta, fraction = rotary_lm.rope(hf, WHAT, "rotary_pct", default_fraction=0.25)
    rotary_dim = int(d // h * fraction)
    if rotary_dim % 2:
        raise CheckpointError(f"{WHAT} rotates {rotary_dim} dims of each head; the half-split "
                              "rotary embedding needs an even number")
    return transformer.TransformerConfig(
        n_layers=hf["num_hidden_layers"], d_model=d, n_heads=h, d_head=d // h,
        d_mlp=hf["intermediate_size"], d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"], act_fn=lm.activation(hf.get("hidden_act", "gelu"),
                                                                  WHAT),
        normalization="LN", ln_eps=hf.get("layer_norm_eps", 1e-5),
        positional_embedding="rotary", rotary_dim=rotary_dim, rotary_base=theta,
        parallel_attn_mlp=hf.get("use_parallel_residual", True))


def to_tl(weights: dict, cfg: transformer.TransformerConfig) -> dict:
    """Hugging Face GPT-NeoX tensors -> TransformerLens-named weights (before processing)."""
    w = lm.HFWeights({k.removeprefix("gpt_neox."): v for k, v in weights.items()}, WHAT, BUFFERS)
    h, dh, d, m = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    tl = {"embed.W_E": w.take("embed_in.weight", (cfg.d_vocab, d))}

    def bias(name, shape, dtype):  # checkpoints saved with attention_bias=false have none
        b = w.take_optional(name, (shape,))
        return np.zeros(shape, dtype) if b is None else b

    for layer in range(cfg.n_layers):
        src, dst = f"layers.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            tl[dst + ours + ".w"] = w.take(src + theirs + ".weight", (d,))
            tl[dst + ours + ".b"] = w.take(src + theirs + ".bias", (d,))
        qkv = w.take(src + "attention.query_key_value.weight", (3 * h * dh, d))  # (H * 3 * dh, d)
        qkv_bias = bias(src + "attention.query_key_value.bias", 3 * h * dh, qkv.dtype)
        weights_, biases = qkv.reshape(h, 3, dh, d), qkv_bias.reshape(h, 3, dh)
        for i, name in enumerate("QKV"):
            tl[dst + f"attn.W_{name}"] = weights_[:, i].transpose(0, 2, 1)  # (H, d, dh)
            tl[dst + f"attn.b_{name}"] = biases[:, i]
        tl[dst + "attn.W_O"] = w.take(src + "attention.dense.weight",
                                      (d, h * dh)).T.reshape(h, dh, d)
        tl[dst + "attn.b_O"] = bias(src + "attention.dense.bias", d, qkv.dtype)
        tl[dst + "mlp.W_in"] = w.take(src + "mlp.dense_h_to_4h.weight", (m, d)).T
        tl[dst + "mlp.b_in"] = bias(src + "mlp.dense_h_to_4h.bias", m, qkv.dtype)
        tl[dst + "mlp.W_out"] = w.take(src + "mlp.dense_4h_to_h.weight", (d, m)).T
        tl[dst + "mlp.b_out"] = bias(src + "mlp.dense_4h_to_h.bias", d, qkv.dtype)
    tl["ln_final.w"] = w.take("final_layer_norm.weight", (d,))
    tl["ln_final.b"] = w.take("final_layer_norm.bias", (d,))
    # the hub's checkpoints call the unembedding embed_out, transformers 5 lm_head; either may be
    # absent when tied to the embedding
    unembed = w.take_optional("embed_out.weight", (cfg.d_vocab, d))
    unembed = w.take_optional("lm_head.weight", (cfg.d_vocab, d)) if unembed is None else unembed
    tl["unembed.W_U"] = (tl["embed.W_E"] if unembed is None else unembed).T
    tl["unembed.b_U"] = np.zeros(cfg.d_vocab, tl["unembed.W_U"].dtype)
    return w.all_used(tl)


FAMILY = LMFamily(
    name="pythia", label="Pythia", config_from_hf=config, to_tl=to_tl,
    default_checkpoint="EleutherAI/pythia-14m",
    # SPEC 5 (pythia-1.4b configs): the Pile tokenised for GPT-NeoX, 128-token samples, 250 for
    # the bases and edges and 500 000 for the Grams, batch sizes 3/4/3.
    default_dataset=("apollo-research/"
                     "sae-monology-pile-uncopyrighted-tokenizer-EleutherAI-gpt-neox-20b"),
    n_ctx=128, max_ctx=None, n_samples=250, n_gram_samples=500_000,
    batch_sizes={"batch_size": 3, "gram_batch_size": 4, "edge_batch_size": 3},
    max_documents=400_000, model=rotary_lm.RotaryLanguageModel)
