"""Load the authors' SequentialTransformer from a local Hugging Face GPT-NeoX checkpoint.

rib (ApolloResearch/rib @ 7a6199f, unmodified, at /work/ref/rib) loads models with
``transformer_lens.HookedTransformer.from_pretrained(name)``, which accepts only official hub
names and loads a tokenizer from the hub. Two loading functions of TransformerLens 1.10 are
patched here, nothing else: a local directory counts as its own official name, and the config
names no tokenizer. Everything after (weight conversion, TransformerLens's processing,
fold_bias) is the authors' and TransformerLens's code as is.

Needs PYTHONPATH=/work/ref/rib:/work/ref/stubs (stubs: mpi4py and torchvision stand-ins, which
the language-model path never calls) and HF_HUB_OFFLINE=1.
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from rib.loader import load_sequential_transformer

_official = tl_loading.get_official_model_name
_convert = tl_loading.convert_hf_model_config


def _local_official_name(name: str) -> str:
    return name if Path(name).is_dir() else _official(name)


def _local_config(name: str, **kwargs) -> dict:
    cfg = _convert(name, **kwargs)
    if Path(name).is_dir():
        cfg["tokenizer_name"] = None  # the token ids are given; no tokenizer is loaded
    return cfg


tl_loading.get_official_model_name = _local_official_name
tl_loading.convert_hf_model_config = _local_config


def load_model(checkpoint: str, node_layers: list[str], dtype: torch.dtype):
    """rib's ``load_sequential_transformer`` on a local checkpoint, as rib's ``load_model``
    calls it for a transformer (bias folded, eval mode)."""
    model = load_sequential_transformer(
        node_layers=list(node_layers), last_pos_module_type=None,
        tlens_pretrained=str(Path(checkpoint).resolve()), tlens_model_path=None,
        fold_bias=True, dtype=dtype, device="cpu")
    model.eval()
    return model


def node_layer_acts(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of every section (= activations at each node layer, tuple inputs concatenated
    along the last axis, as rib's hooks concatenate them), and the logits."""
    acts = []
    hooks = [section.register_forward_pre_hook(
        lambda mod, inputs: acts.append(torch.cat(list(inputs), dim=-1).detach().clone()))
        for name, section in model.sections.items() if name != "pre"]
    try:
        with torch.inference_mode():
            logits = model(tokens)[0]
    finally:
        for h in hooks:
            h.remove()
    return acts, logits
