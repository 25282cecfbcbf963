"""Random Hugging Face checkpoints of GPT-NeoX (Pythia) and the Llama family, made on the spot.

Each helper builds a tiny model with transformers and PyTorch, randomises every parameter (norm
scales around 1) and saves it with ``save_pretrained``; the tests that use them need PyTorch. The
configurations exercise what the converters must get right: partial rotary embeddings, parallel
and sequential GPT-NeoX blocks, grouped-query attention, a non-default ``rope_theta``, Qwen2's
q/k/v biases, tied and untied embeddings. :func:`float64_faithful` patches the places where
transformers computes in float32 inside a float64 model.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.hf_tiny import N_POSITIONS, VOCAB

NORM_NAMES = ("layernorm", "layer_norm", "norm.weight")


def randomise(model, seed: int = 0, scale: float = 0.3):
    """Replace every parameter: norm scales ``1 + N(0, scale)``, the rest ``N(0, scale)``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = scale * torch.randn(param.shape, generator=gen)
            is_scale = any(n in name for n in NORM_NAMES) and name.endswith("weight")
            param.copy_(1 + noise if is_scale else noise)
    return model.eval()


def pythia(directory: Path, parallel: bool = True, seed: int = 0):
    """A random 2-layer GPT-NeoX (d_model 32, 4 heads of 8, half of each head rotary)."""
    import transformers

    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=N_POSITIONS, rotary_pct=0.5,
        rotary_emb_base=100.0, use_parallel_residual=parallel, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return _save(transformers.GPTNeoXForCausalLM(config), directory, seed)


LLAMA_SHAPES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, intermediate_size=48,
                    max_position_embeddings=N_POSITIONS, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                    bos_token_id=0, eos_token_id=0, attn_implementation="eager")


def llama(directory: Path, seed: int = 0):
    """A random 2-layer Llama with grouped-query attention (2 key/value heads for 4 query heads)
    and an untied unembedding."""
    import transformers

    config = transformers.LlamaConfig(**LLAMA_SHAPES, tie_word_embeddings=False)
    return _save(transformers.LlamaForCausalLM(config), directory, seed)


def qwen2(directory: Path, seed: int = 1):
    """A random 2-layer Qwen2: Llama's structure plus q/k/v biases, with tied embeddings."""
    import transformers

    shapes = {k: v for k, v in LLAMA_SHAPES.items() if k != "head_dim"}
    config = transformers.Qwen2Config(**shapes, tie_word_embeddings=True)
    return _save(transformers.Qwen2ForCausalLM(config), directory, seed)


def mistral(directory: Path, seed: int = 2):
    """A random 2-layer Mistral whose sliding window is the whole context (so never in use)."""
    import transformers

    config = transformers.MistralConfig(**LLAMA_SHAPES, sliding_window=N_POSITIONS,
                                        tie_word_embeddings=False)
    return _save(transformers.MistralForCausalLM(config), directory, seed)


def _save(model, directory: Path, seed: int, scale: float = 0.2):
    # 0.2 rather than hf_tiny's 0.3: the gated MLP's products grow the logits, and float32
    # comparisons at 1e-5 need logits of order 1
    model = randomise(model, seed, scale)
    model.save_pretrained(directory)
    return model


# --- float64 references -----------------------------------------------------------------------

def _eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention without its float32 softmax (grouped heads repeated)."""
    import torch

    groups = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    scores = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def _rotary_forward(self, x, position_ids):
    """transformers' default rotary angles, computed in float64 instead of float32."""
    import torch

    dim = 2 * len(self.inv_freq)
    base = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    freqs = position_ids[..., None].double() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def _rms_norm_forward(self, x):
    """transformers' RMSNorm without its cast to float32."""
    import torch

    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def float64_faithful(model, monkeypatch) -> None:
    """Patch (with pytest's ``monkeypatch``) the float32 steps of ``model``'s modeling code:
    rotary angles, the eager softmax and RMSNorm, so that a float64 model is float64 throughout."""
    import sys

    modeling = sys.modules[type(model).__module__]
    monkeypatch.setattr(modeling, "eager_attention_forward", _eager_attention)
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RotaryEmbedding"):
            monkeypatch.setattr(type(module), "forward", _rotary_forward)
        elif name.endswith("RMSNorm"):
            monkeypatch.setattr(type(module), "forward", _rms_norm_forward)
