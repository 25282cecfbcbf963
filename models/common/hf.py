"""Hugging Face checkpoints without PyTorch: find one, read its config, weights and tokenizer.

A checkpoint is a local directory with ``config.json`` and the weights (``model.safetensors``, a
sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``), or a hub name (``gpt2``,
``roneneldan/TinyStories-1M``) that ``huggingface_hub`` takes from its cache or downloads when a
network is there, or a GGUF file (or a directory holding one), read by :mod:`models.common.gguf`
into the same forms: every function here takes the path :func:`resolve` returns, either form.
Weights come back as NumPy arrays under their Hugging Face names; converting them
is the architecture's job (:mod:`models.lm.gpt2`, :mod:`models.lm.gptneo`), which first checks
the config against the attributes it understands (:func:`check_config`). Safetensors files are
read with ``safetensors.numpy``; PyTorch is imported only to read a ``pytorch_model.bin``, and is
never a dependency of libjax.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from libjax.errors import CheckpointError, DataError
from models.common import gguf

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json"]

Encoder = Callable[[list[str]], list[list[int]]]


# Attributes of every Hugging Face config that do not change what a causal LM computes in
# evaluation: names and bookkeeping, token ids, output switches, tokenizer and generation
# settings, initialisation.
GENERIC = frozenset({
    "_name_or_path", "name_or_path", "_commit_hash", "_attn_implementation_autoset",
    "architectures", "model_type", "model_name", "transformers_version", "dtype", "torch_dtype",
    "use_bfloat16", "transformers.js_config",
    # token ids
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "unk_token_id",
    "cls_token_id", "mask_token_id", "decoder_start_token_id", "forced_bos_token_id",
    "forced_eos_token_id",
    # labels and heads libjax does not load
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
    "task_specific_params",
    # tokenizer settings
    "tokenizer_class", "prefix", "chat_template",
    # output switches and implementation choices of the same function
    "return_dict", "output_attentions", "output_hidden_states", "output_scores",
    "return_dict_in_generate", "torchscript", "use_cache", "chunk_size_feed_forward",
    "gradient_checkpointing", "attn_implementation", "_attn_implementation", "is_decoder",
    "tf_legacy_loss",
    # initialisation
    "initializer_range",
    # generation settings
    "max_length", "min_length", "max_new_tokens", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "generation_config",
    # cross-attention sizes, used only with add_cross_attention (which converters require off)
    "cross_attention_hidden_size",
})


def check_config(config: dict, what: str, understood, required: dict | None = None) -> None:
    """The one policy of every converter: refuse a ``config.json`` that sets anything the
    converter does not understand. Each attribute must be :data:`GENERIC` (cannot change the
    computation), in ``understood`` (read by the converter, or training-only such as dropout), or
    in ``required`` with the value given there (a feature libjax does not implement, off);
    anything else is refused by name, since it may make the model compute something else."""
    required = required or {}
    unknown = sorted(set(config) - GENERIC - set(understood) - set(required))
    if unknown:
        raise CheckpointError(f"the {what} config.json sets {', '.join(unknown)}, which libjax's "
                              f"{what} converter does not know; it cannot vouch for such a model "
                              "(if the attribute cannot change what the model computes, remove "
                              "it from config.json)")
    for name, value in required.items():
        if name in config and config[name] != value:
            raise CheckpointError(f"{what} with {name}={config[name]!r} is not supported "
                                  f"(libjax needs {value!r})")


def require(config: dict, what: str, names) -> None:
    """Refuse a config whose sizes ``names`` (the architecture is read from them) are missing or
    not positive integers."""
    missing = [name for name in names if config.get(name) is None]
    if missing:
        raise CheckpointError(f"the {what} config.json lacks {', '.join(missing)}; it is not a "
                              f"complete {what} config")
    bad = [f"{name}={config[name]!r}" for name in names
           if isinstance(config[name], bool) or not isinstance(config[name], int)
           or config[name] <= 0]
    if bad:
        raise CheckpointError(f"the {what} config.json sets {', '.join(bad)}; sizes must be "
                              "positive integers")


def check_architecture(config: dict, model_types: tuple[str, ...], what: str, understood,
                       required: dict | None = None, sizes=()) -> None:
    """What every converter checks before it reads ``config``: its ``model_type``, the allow-list
    (:func:`check_config`) and the sizes it reads the architecture from (:func:`require`)."""
    if config.get("model_type") not in model_types:
        raise CheckpointError(f"the checkpoint is a {config.get('model_type')!r} model, not "
                              f"{what} (model_type {' or '.join(map(repr, model_types))})")
    check_config(config, what, understood, required)
    require(config, what, sizes)


def split_heads(config: dict, what: str, width: str, heads: str) -> tuple[int, int]:
    """The width and head count that ``config`` gives under the names ``width`` and ``heads``;
    refused unless the heads split the width."""
    d, h = config[width], config[heads]
    if d % h:
        raise CheckpointError(f"{what}: {width}={d} does not split into {heads}={h} heads")
    return d, h


def checkpoint_id(checkpoint: str) -> str:
    """What a build records as its checkpoint: ``checkpoint`` itself, or for a GGUF file its
    :func:`models.common.gguf.checkpoint_id` (the path marked with its quantisation), which
    :func:`resolve` accepts back."""
    found = gguf.find(Path(checkpoint).expanduser())
    return gguf.checkpoint_id(found) if found is not None else str(checkpoint)


def _how_to_point(what: str, hub_name: str = "HUB_NAME") -> str:
    return (f"To use a local copy of the {what} weights, fetch them where there is a network "
            f"(e.g. `hf download {hub_name} --local-dir DIR`, or `save_pretrained(DIR)` in "
            f"transformers) and pass --checkpoint=DIR: a directory with {CONFIG} and "
            f"{SAFETENSORS} (or {TORCH_BIN}), plus the tokenizer files (tokenizer.json, or "
            "vocab.json and merges.txt) for text data.")


def _has_weights(directory: Path) -> bool:
    return any((directory / f).is_file() for f in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))


def _from_hub(name: str, what: str) -> Path:
    """The snapshot directory of hub repo ``name`` (cache first, then download): config, tokenizer
    and safetensors weights, or ``pytorch_model.bin`` if the repo has no safetensors."""
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise CheckpointError(f"--checkpoint={name!r} is not a local directory, and the "
                              f"huggingface_hub package that resolves hub names is not installed. "
                              + _how_to_point(what, name)) from None
    try:
        snapshot = Path(huggingface_hub.snapshot_download(
            name, allow_patterns=[CONFIG, "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]))
        if not _has_weights(snapshot):
            snapshot = Path(huggingface_hub.snapshot_download(name, allow_patterns=[TORCH_BIN]))
    except (OSError, ValueError, errors.EntryNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"no {what} weights for --checkpoint={name!r}: there is no local directory "
            f"{Path(name).resolve()}, and the Hugging Face hub (cache {constants.HF_HUB_CACHE}) "
            f"could not provide {name!r} ({type(err).__name__}: {reason}). "
            + _how_to_point(what, name)) from None
    return snapshot


def resolve(checkpoint: str, what: str) -> Path:
    """The local directory of ``checkpoint``: itself if it is a directory, else a hub snapshot.

    ``what`` names the model in error messages (e.g. ``"GPT-2"``).
    """
    path = Path(checkpoint).expanduser()
    found = gguf.find(path)
    if found is not None:
        return found
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"--checkpoint={checkpoint!r} is a file; give the Hugging Face "
                              f"checkpoint directory that holds it (with {CONFIG}), a GGUF "
                              "file (.gguf) or a hub name")
    if checkpoint.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint directory {path.resolve()} does not exist. "
                              + _how_to_point(what))
    directory = _from_hub(checkpoint, what)
    if not _has_weights(directory):
        raise CheckpointError(f"the hub repo {checkpoint!r} has neither {SAFETENSORS} nor "
                              f"{TORCH_BIN}; it is not a {what} checkpoint")
    return directory


def read_config(directory: Path) -> dict:
    """The model's ``config.json`` (a GGUF file's: the same attributes, from its metadata)."""
    if gguf.is_gguf(directory):
        return gguf.read_config(directory)
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG}; a Hugging Face checkpoint directory "
                              f"holds {CONFIG} beside the weights")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not the object of "
                              "attributes a model config is")
    return config


def _torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch file, and reading it needs PyTorch, which libjax does not depend "
            f"on. Install torch (pip install torch), or convert the file to {SAFETENSORS} once "
            "where torch is available (transformers: save_pretrained(DIR, "
            "safe_serialization=True))") from None
    try:  # weights_only: a checkpoint holds tensors, never code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch's own errors, whatever the file holds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}"
                              f"{': ' + reason[:200] if reason else ''}); re-download it, or "
                              f"convert it to {SAFETENSORS}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of named "
                              f"tensors; a {TORCH_BIN} must be a model's state_dict()")
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.to(torch.float32)
        out[name] = tensor.detach().numpy()
    return out


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file; bfloat16 ones (many hub checkpoints) widened to
    float32, exactly (importing ``ml_dtypes``, jax's own dependency, teaches NumPy bfloat16)."""
    import ml_dtypes  # noqa: F401
    from safetensors.numpy import load_file
    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-download "
                              "it") from None
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v
            for k, v in weights.items()}


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint in ``directory`` (or GGUF file), by their Hugging Face
    names."""
    directory = Path(directory)
    if gguf.is_gguf(directory):
        weights = gguf.read_weights(directory)
    elif (directory / SAFETENSORS).is_file():
        weights = _safetensors(directory / SAFETENSORS)
    elif (directory / SAFETENSORS_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((directory / SAFETENSORS_INDEX).read_text())
                                ["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{directory / SAFETENSORS_INDEX} is not a safetensors index "
                                  "(a JSON object with a \"weight_map\" of tensor -> file); "
                                  "re-download it") from None
        weights = {}
        for shard in shards:
            weights.update(_safetensors(directory / shard))
    elif (directory / TORCH_BIN).is_file():
        weights = _torch_bin(directory / TORCH_BIN)
    else:
        present = sorted(p.name for p in directory.iterdir())
        raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS}, "
                              f"{SAFETENSORS_INDEX} or {TORCH_BIN}; found {present}")
    for name, value in weights.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise CheckpointError(f"{directory}: weight {name!r} contains NaN or inf; the "
                                  "checkpoint is broken and cannot be analysed")
    return weights


def load_tokenizer(directory: Path) -> Encoder:
    """The checkpoint's tokenizer as ``texts -> token ids`` (no special tokens added).

    ``tokenizer.json`` is read with the ``tokenizers`` library, a GGUF file's with
    :func:`models.common.gguf.tokenizer`; other layouts (``vocab.json`` + ``merges.txt``) go
    through ``transformers.AutoTokenizer``. A checkpoint without tokenizer files is refused (for
    one, transformers builds an empty tokenizer that turns every text into no tokens).
    """
    directory = Path(directory)
    if gguf.is_gguf(directory):
        tok = gguf.tokenizer(directory)
        return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not {"tokenizer.json", "vocab.json"} & set(present):
        raise DataError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json and "
                        f"merges.txt; found {present or 'none'}), so text data cannot be "
                        "tokenised for this model. Copy the model's tokenizer files there, or "
                        "give pre-tokenised .npy token ids with --data_dir")
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as err:  # tokenizers raises plain Exceptions for unreadable files
            raise DataError(f"{directory / 'tokenizer.json'} is not a readable tokenizer "
                            f"({err}); re-download the model's tokenizer files") from None
        return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"no tokenizer in {directory} ({type(err).__name__}: {err}); text data "
                        "needs the model's tokenizer there (tokenizer.json, or vocab.json and "
                        "merges.txt), or give pre-tokenised .npy token ids") from None
    return lambda texts: auto(texts, add_special_tokens=False)["input_ids"]
