"""Model families the command-line tools know, by ``--model`` name.

A family turns model-agnostic options (checkpoint, data, node layers) into what a build needs:
a :class:`~models.sectioned.SectionedModel`, its input data, and the paper's build settings for
that model. Adding a model means adding a family here; the scripts never change.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import numpy as np

from libjax.errors import ConfigError
from models import modadd
from models.sectioned import SectionedModel


@dataclasses.dataclass(frozen=True)
class Options:
    """What the user asked for, independent of the model family (``None`` = family default)."""

    checkpoint: Optional[str] = None
    node_layers: Optional[tuple[str, ...]] = None
    layer: Optional[int] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    split: Optional[str] = None
    n_samples: Optional[int] = None
    n_gram_samples: Optional[int] = None
    n_ctx: Optional[int] = None
    dtype: str = "float64"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Data:
    """Model inputs for the basis/edges and for the Gram matrices, and labels where known."""

    inputs: np.ndarray
    gram_inputs: np.ndarray
    labels: Optional[np.ndarray] = None


class Family(Protocol):
    name: str

    def node_layers(self, opts: Options) -> tuple[str, ...]:
        """The node layers to use (``opts.node_layers`` or the family's default)."""

    def build_defaults(self, opts: Options) -> dict:
        """``BuildConfig`` fields that this model's paper configuration sets."""

    def load(self, opts: Options, node_layers: tuple[str, ...]) -> SectionedModel:
        """The sectioned model, with weights from ``opts.checkpoint``."""

    def data(self, opts: Options) -> Data:
        """The build's inputs."""

    def model_id(self, opts: Options) -> str:
        """A string identifying the weights (recorded with every build)."""


class ModAdd:
    """The modular-addition transformer; default: the checkpoint shipped in the package."""

    name = "modadd"

    def node_layers(self, opts):
        if opts.layer not in (None, 0):
            raise ConfigError(f"the modular-addition model has one block; --layer={opts.layer} "
                              "does not exist (use --layer=0 or --node_layers)")
        return opts.node_layers or modadd.PAPER_NODE_LAYERS

    def build_defaults(self, opts):
        return {}

    def load(self, opts, node_layers):
        cfg, weights = modadd.load(opts.checkpoint)
        return modadd.sectioned(weights, cfg, node_layers, dtype=np.dtype(opts.dtype))

    def data(self, opts):
        tokens, labels = modadd.split_data(opts.split or "train")
        if opts.n_samples is not None:
            tokens, labels = tokens[:opts.n_samples], labels[:opts.n_samples]
        return Data(tokens, tokens, labels)

    def model_id(self, opts):
        return str(opts.checkpoint or modadd.DEFAULT_CHECKPOINT)


FAMILIES: dict[str, Family] = {"modadd": ModAdd()}
PLANNED = {"gpt2": "GPT-2", "tinystories-1m": "TinyStories-1M", "mlp": "MLP"}


def get(name: str) -> Family:
    if name in FAMILIES:
        return FAMILIES[name]
    if name in PLANNED:
        raise ConfigError(f"{PLANNED[name]} (--model={name}) is not supported in this version of "
                          f"libjax yet; available models: {', '.join(FAMILIES)}")
    raise ConfigError(f"unknown model {name!r}; available models: {', '.join(FAMILIES)}")
