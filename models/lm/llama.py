"""The Llama family from Hugging Face checkpoints and the ``--model=llama`` family.

One converter for ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and ``MistralForCausalLM`` (and
checkpoints of the same structure, e.g. SmolLM): RMSNorm, rotary embeddings on whole heads with
the model's ``rope_theta``, grouped-query attention, the gated MLP ``(act(x W_gate) * (x W_up))
W_down``, optional biases (Qwen2's q/k/v, ``attention_bias``, ``mlp_bias``), tied or untied
embeddings. The converter understands an explicit ALLOW-LIST of ``config.json`` attributes (the
policy every
converter shares, :func:`models.common.hf.check_config`) and refuses any other by name, so that a
variant it does not implement (QK-norm, scaled rope, sliding windows in use, ...) is an error
rather than a silently different model.

RMSNorm subtracts no mean, so the only weight processing that stays exact is folding its scale
into the weights reading it (:func:`models.common.weight_processing.process` with ``rms=True``).
"""

from __future__ import annotations

import numpy as np

from libjax.errors import CheckpointError
from models.common import transformer
from models.common.hf import check_architecture
from models.lm import model as lm
from models.lm import rotary as rotary_lm
from models.lm.family import LMFamily

WHAT = "Llama-family"
MODEL_TYPES = ("llama", "qwen2", "mistral")
BUFFERS = (".rotary_emb.inv_freq",)

# config.json attributes the converter reads (below), or that cannot change the computation for
# these models (dropout in training; pretraining_tp: the same matmuls cut into slices); the
# generic ones (token ids, dtype, generation settings ...) are hf.GENERIC
UNDERSTOOD = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings",
              "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
              "partial_rotary_factor", "attention_bias", "mlp_bias", "tie_word_embeddings",
              "sliding_window", "use_sliding_window", "layer_types", "max_window_layers",
              "attention_dropout", "pretraining_tp",
              "is_llama_config"}  # nanotron's mark in SmolLM configs
# nanotron's rope_interleaved (SmolLM configs): transformers ignores it and rotates halves, as
# libjax does; an interleaved checkpoint would need the other pairing
REQUIRED = {"rope_interleaved": False}
SHAPE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
         "intermediate_size", "max_position_embeddings")


def _sliding_window(hf: dict) -> int | None:
    """The attention window in use, if any: Mistral's ``sliding_window``, Qwen2's only with
    ``use_sliding_window`` (then refused: it applies to some layers only)."""
    if hf["model_type"] == "qwen2":
        sliding = hf.get("use_sliding_window") or any(
            kind != "full_attention" for kind in hf.get("layer_types") or ())
        if sliding:
            raise CheckpointError("Qwen2 with use_sliding_window (per-layer sliding-window "
                                  "attention) is not supported")
        return None
    if hf.get("layer_types") and any(k != "full_attention" for k in hf["layer_types"]):
        raise CheckpointError(f"{WHAT} checkpoints with per-layer attention types "
                              f"{sorted(set(hf['layer_types']))} are not supported")
    return hf.get("sliding_window")


def config(hf: dict) -> transformer.TransformerConfig:
    """The architecture of a Hugging Face ``llama``/``qwen2``/``mistral`` ``config.json``.

    A Mistral sliding window shorter than the context caps the context at the window, where it
    masks nothing (the reference has no sliding-window attention for these models)."""
    check_architecture(hf, MODEL_TYPES, WHAT, UNDERSTOOD, REQUIRED, SHAPE)
    theta, fraction = rotary_lm.rope(hf, WHAT)
    if fraction != 1.0:
        raise CheckpointError(f"{WHAT} with partial_rotary_factor={fraction} is not supported: "
                              "the llama family rotates whole heads")
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or h
    if not hf.get("head_dim") and d % h:
        raise CheckpointError(f"{WHAT}: hidden_size={d} does not split into "
                              f"num_attention_heads={h} heads (and the config gives no head_dim)")
    d_head = hf.get("head_dim") or d // h
    if h % kv:
        raise CheckpointError(f"{WHAT}: {h} attention heads cannot share {kv} key/value heads")
    n_ctx = hf["max_position_embeddings"]
    window = _sliding_window(hf)
    return transformer.TransformerConfig(
        n_layers=hf["num_hidden_layers"], d_model=d, n_heads=h, d_head=d_head,
        d_mlp=hf["intermediate_size"], d_vocab=hf["vocab_size"],
        n_ctx=min(n_ctx, window) if window else n_ctx,
        act_fn=lm.activation(hf.get("hidden_act", "silu"), WHAT), normalization="RMS",
        ln_eps=hf.get("rms_norm_eps", 1e-6), positional_embedding="rotary", rotary_dim=d_head,
        rotary_base=theta, n_key_value_heads=kv, gated_mlp=True)


def to_tl(weights: dict, cfg: transformer.TransformerConfig) -> dict:
    """Hugging Face Llama/Qwen2/Mistral tensors -> TransformerLens-named weights (before
    processing; absent biases are zeros)."""
    w = lm.HFWeights({k.removeprefix("model."): v for k, v in weights.items()}, WHAT, BUFFERS)
    h, hkv, dh, d, m = cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    tl = {"embed.W_E": w.take("embed_tokens.weight", (cfg.d_vocab, d))}
    dtype = tl["embed.W_E"].dtype

    def linear(name, n_in, n_out):  # nn.Linear (out, in) -> (in, out) and its bias (zeros if none)
        bias = w.take_optional(name + ".bias", (n_out,))
        return (w.take(name + ".weight", (n_out, n_in)).T,
                np.zeros(n_out, dtype) if bias is None else bias)

    for layer in range(cfg.n_layers):
        src, dst = f"layers.{layer}.", f"blocks.{layer}."
        tl[dst + "ln1.w"] = w.take(src + "input_layernorm.weight", (d,))
        tl[dst + "ln2.w"] = w.take(src + "post_attention_layernorm.weight", (d,))
        for name, heads in (("Q", h), ("K", hkv), ("V", hkv)):
            weight, bias = linear(src + f"self_attn.{name.lower()}_proj", d, heads * dh)
            tl[dst + f"attn.W_{name}"] = lm.heads_in(weight, heads)
            tl[dst + f"attn.b_{name}"] = bias.reshape(heads, dh)
        weight, tl[dst + "attn.b_O"] = linear(src + "self_attn.o_proj", h * dh, d)
        tl[dst + "attn.W_O"] = weight.reshape(h, dh, d)
        for ours, theirs, n_in, n_out in (("gate", "gate_proj", d, m), ("in", "up_proj", d, m),
                                          ("out", "down_proj", m, d)):
            tl[dst + f"mlp.W_{ours}"], tl[dst + f"mlp.b_{ours}"] = linear(
                src + f"mlp.{theirs}", n_in, n_out)
    tl["ln_final.w"] = w.take("norm.weight", (d,))
    unembed = w.take_optional("lm_head.weight", (cfg.d_vocab, d))
    tl["unembed.W_U"] = (tl["embed.W_E"] if unembed is None else unembed).T
    tl["unembed.b_U"] = np.zeros(cfg.d_vocab, dtype)
    return w.all_used(tl)


FAMILY = LMFamily(
    name="llama", label="Llama-family model", config_from_hf=config, to_tl=to_tl,
    default_checkpoint="HuggingFaceTB/SmolLM2-135M",
    # No paper settings exist for these models; Pythia's (SPEC 5): the Pile (as text, tokenised
    # with the checkpoint's own tokenizer), 128-token samples, 250 for the bases and edges and
    # 500 000 for the Grams.
    default_dataset="monology/pile-uncopyrighted", n_ctx=128, max_ctx=None, n_samples=250,
    n_gram_samples=500_000, batch_sizes={"batch_size": 3, "gram_batch_size": 4,
                                          "edge_batch_size": 3},
    max_documents=400_000, model=rotary_lm.RotaryLanguageModel)
