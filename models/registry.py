"""Model families the command-line tools know, by ``--model`` name.

A family turns model-agnostic options (checkpoint, data, node layers) into what a build needs:
a :class:`~models.sectioned.SectionedModel`, its input data, and the paper's build settings for
that model. Adding a model means adding a family here; the scripts never change.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Sequence

import numpy as np

from libjax.errors import ConfigError, DataError
from models import gpt2, gptneo, llama, mlp, modadd, modadd_fourier, pythia
from models.sectioned import SectionedModel

DTYPES = ("float64", "float32")


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

    def __post_init__(self):
        for name in ("n_samples", "n_gram_samples", "n_ctx"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"--layer must be >= 0, got {self.layer}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.seed < 0:
            raise ConfigError(f"the seed must be >= 0, got {self.seed}")


def reject_unused(opts: Options, model: str, names: Sequence[str]) -> None:
    """Options that a family has no use for are errors, never silently ignored."""
    given = [f"--{n}" for n in names if getattr(opts, n) is not None]
    if given:
        raise ConfigError(f"{model} does not take {', '.join(given)}; leave it out")


def first_samples(x: np.ndarray, opts: Options, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The build's inputs and Gram inputs: the first ``--n_samples`` and ``--n_gram_samples``
    (default: ``--n_samples``; all if neither) of ``x``. Asking for more samples than ``source``
    has is a :class:`DataError`, not a silently smaller dataset."""
    def first(n: Optional[int], flag: str) -> np.ndarray:
        if n is not None and n > len(x):
            raise DataError(f"{source} has {len(x)} samples, fewer than {flag}={n}; lower {flag}")
        return x if n is None else x[:n]

    gram_flag = "--n_gram_samples" if opts.n_gram_samples else "--n_samples"
    return (first(opts.n_samples, "--n_samples"),
            first(opts.n_gram_samples or opts.n_samples, gram_flag))


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

    # Optional (scripts/ablate.py and scripts/plot_graph.py fall back without them):

    def ablation_defaults(self, opts: Options) -> dict:
        """The paper's ablation settings for this model: evaluation ``split``, ``metric``,
        ``batch_size`` and the exponential schedule's ``ablate_every_vec_cutoff``/``exp_base``."""

    def direction_labels(self, opts: Options, model: SectionedModel, graph) -> dict[str, list[str]]:
        """A short text per direction of each node layer of ``graph``, for graph plots."""


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
        reject_unused(opts, "the modular-addition model (its data is every pair a, b)",
                      ("dataset", "data_dir", "n_ctx"))
        split = opts.split or "train"
        tokens, labels = modadd.split_data(split)
        inputs, gram_inputs = first_samples(tokens, opts, f"the modular-addition {split} split")
        return Data(inputs, gram_inputs, labels[:len(inputs)])

    def model_id(self, opts):
        return str(opts.checkpoint or modadd.DEFAULT_CHECKPOINT)

    def ablation_defaults(self, opts):
        return {"split": "test", "metric": "accuracy", "batch_size": 99999,
                "ablate_every_vec_cutoff": 10, "exp_base": 1.05}

    def direction_labels(self, opts, model, graph):
        return modadd_fourier.labels(model, graph)


FAMILIES: dict[str, Family] = {"modadd": ModAdd(), "mlp": mlp.MLPFamily(), "gpt2": gpt2.FAMILY,
                               "tinystories-1m": gptneo.TINYSTORIES, "pythia": pythia.PYTHIA,
                               "llama": llama.LLAMA}
PLANNED: dict[str, str] = {}


def of_build(build_info: dict, name: str | None) -> Family:
    """The family of a finished build: ``name`` if given, else the one its build.json records."""
    name = name or build_info.get("family")
    if name is None:
        raise ConfigError("this build's build.json does not record its model family (it predates "
                          "that record); pass --model")
    return get(name)


def get(name: str) -> Family:
    if name in FAMILIES:
        return FAMILIES[name]
    if name in PLANNED:
        raise ConfigError(f"{PLANNED[name]} (--model={name}) is not supported in this version of "
                          f"libjax yet; available models: {', '.join(FAMILIES)}")
    raise ConfigError(f"unknown model {name!r}; available models: {', '.join(FAMILIES)}")
