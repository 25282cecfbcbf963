"""Random Hugging Face checkpoints (GPT-2, GPT-Neo) and a tokenizer, made on the spot.

Helpers for the GPT-2/GPT-Neo tests. :func:`gpt2` and :func:`gptneo` build the models with
transformers and PyTorch and save them with ``save_pretrained``; :func:`gpt2_numpy` writes the same
file layout (``config.json`` + ``model.safetensors``) with NumPy only, for tests that must not need
PyTorch (the equivalence tests check that transformers reads it). Every parameter is random
(LayerNorm scales around 1), so that no part of the model is trivially the identity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
VOCAB = 64
N_POSITIONS = 16

CORPUS = [
    "Once upon a time there was a little fox who liked to run in the green forest.",
    "The fox met a small bird. The bird could sing, and the fox could not.",
    "Every morning the sun rose over the hills and the river ran to the sea.",
    "A girl named Lily found a shiny stone near the river and took it home.",
    "Tom and his dog played with a red ball until the evening came.",
    "The old tree in the garden had many apples, and the children ate them all.",
]


def randomise(model, seed: int = 0, scale: float = 0.3):
    """Replace every parameter: LayerNorm scales ``1 + N(0, scale)``, the rest ``N(0, scale)``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = scale * torch.randn(param.shape, generator=gen)
            is_ln_scale = ".ln_" in f".{name}" and name.endswith("weight")
            param.copy_(1 + noise if is_ln_scale else noise)
    return model.eval()


def gpt2(directory: Path, n_layer: int = 2, n_embd: int = 16, n_head: int = 4, seed: int = 0):
    """A random GPT-2 saved to ``directory``; returns the torch model (float32)."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = randomise(transformers.GPT2LMHeadModel(config), seed)
    model.save_pretrained(directory)
    return model


def gptneo(directory: Path, window: int = 4, seed: int = 0):
    """A random 2-layer GPT-Neo (global then local attention with a short window) in
    ``directory``; returns the torch model (float32)."""
    import transformers

    config = transformers.GPTNeoConfig(
        vocab_size=VOCAB, max_position_embeddings=N_POSITIONS, hidden_size=16, num_layers=2,
        num_heads=4, attention_types=[[["global", "local"], 1]], window_size=window,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = randomise(transformers.GPTNeoForCausalLM(config), seed)
    model.save_pretrained(directory)
    return model


def gpt2_numpy(directory: Path, n_layer: int = 2, n_embd: int = 16, n_head: int = 4,
               vocab: int = VOCAB, n_positions: int = N_POSITIONS, seed: int = 0,
               scale: float = 0.3) -> None:
    """A random GPT-2 checkpoint in Hugging Face's layout, written without PyTorch."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    d, m = n_embd, 4 * n_embd
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (n_positions, d)}
    for layer in range(n_layer):
        h = f"h.{layer}."
        shapes.update({h + "ln_1.weight": (d,), h + "ln_1.bias": (d,),
                       h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,),
                       h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
                       h + "ln_2.weight": (d,), h + "ln_2.bias": (d,),
                       h + "mlp.c_fc.weight": (d, m), h + "mlp.c_fc.bias": (m,),
                       h + "mlp.c_proj.weight": (m, d), h + "mlp.c_proj.bias": (d,)})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    tensors = {}
    for name, shape in shapes.items():
        noise = (scale * rng.standard_normal(shape)).astype(np.float32)
        tensors["transformer." + name] = 1 + noise if ".ln_" in f".{name}" and \
            name.endswith("weight") else noise
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
        "n_positions": n_positions, "n_embd": d, "n_layer": n_layer, "n_head": n_head,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True, "tie_word_embeddings": True, "bos_token_id": 0,
        "eos_token_id": 0}))


def tokenizer(directory: Path, corpus=CORPUS) -> None:
    """Train a byte-level BPE tokenizer (EOS = id 0, ``VOCAB`` tokens) on ``corpus`` and save it
    as ``tokenizer.json`` beside a ``tokenizer_config.json``, so that both ``tokenizers`` and
    ``transformers.AutoTokenizer`` load it from ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS])
    tok.train_from_iterator(corpus, trainer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS}))
