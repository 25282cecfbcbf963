"""What every model family shares: the user's options, the data a build runs on, and the
:class:`Family` base class that turns options into a sectioned model and its data.

Nothing here imports another module of ``models/``: families import this module, the registry
imports the families.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Sequence
from typing import Optional

import numpy as np

from libjax.errors import ConfigError, DataError
from libjax.model import SectionedModel

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


_BLOCKS = re.compile(r"all|\d+|\d+(,\d+)+|\d+-\d+")


def single_block(spec: Optional[str]) -> Optional[int]:
    """``--layer``'s block when it names one (``6``); None when it is unset or names several
    (``all``, a list ``0,3,6``, a range ``4-7``: see :func:`select_blocks`); anything else is a
    :class:`ConfigError`."""
    if spec is None:
        return None
    if not _BLOCKS.fullmatch(spec):
        raise ConfigError(f"--layer={spec!r} is not a block (6), a list (0,3,6), a range (4-7) "
                          "or all")
    return int(spec) if spec.isdigit() else None


def select_blocks(spec: str, n_blocks: int, label: str) -> tuple[int, ...]:
    """The blocks, in increasing order, that ``--layer=spec`` names among ``0..n_blocks - 1``:
    ``all``, one block, a comma-separated list or a range ``first-last`` (both included)."""
    single_block(spec)  # the form
    if spec == "all":
        return tuple(range(n_blocks))
    if "-" in spec:
        first, last = (int(b) for b in spec.split("-"))
        if first > last:
            raise ConfigError(f"--layer={spec}: a range goes up, first-last (e.g. 4-7)")
        blocks = list(range(first, last + 1))
    else:
        blocks = [int(b) for b in spec.split(",")]
        twice = sorted({b for b in blocks if blocks.count(b) > 1})
        if twice:
            raise ConfigError(f"--layer={spec} names block(s) {twice} more than once")
    outside = [b for b in blocks if b >= n_blocks]
    if outside:
        raise ConfigError(f"{label} has blocks 0..{n_blocks - 1}; --layer={spec} names "
                          f"{outside}, which do not exist")
    return tuple(sorted(blocks))


@dataclasses.dataclass(frozen=True)
class Data:
    """Model inputs for the basis/edges and for the Gram matrices, and labels where known.
    ``source``: where they came from, for the build record (``build.json`` ``"data"``) or an
    ablation record; None where the options say it all."""

    inputs: np.ndarray
    gram_inputs: np.ndarray
    labels: Optional[np.ndarray] = None
    source: Optional[dict] = None


class Family(abc.ABC):
    """A model the command-line tools know by ``--model`` name. Subclasses implement the abstract
    methods (:meth:`node_layers`, :meth:`load`, :meth:`data`, :meth:`model_id`); the optional
    capabilities have defaults.
    """

    name: str

    @abc.abstractmethod
    def node_layers(self, opts: Options) -> tuple[str, ...]:
        """The node layers to use (``opts.node_layers`` or the family's default)."""

    def build_defaults(self, opts: Options) -> dict:
        """``BuildConfig`` fields that this model's paper configuration sets."""
        return {}

    @abc.abstractmethod
    def load(self, opts: Options, node_layers: tuple[str, ...]) -> SectionedModel:
        """The sectioned model, with weights from ``opts.checkpoint``."""

    def load_for_build(self, opts: Options, node_layers: tuple[str, ...]) -> SectionedModel:
        """The sectioned model a build needs, which never runs past its last node layer: a family
        may leave out the weights after it (default: :meth:`load`)."""
        return self.load(opts, node_layers)

    def blocks(self, opts: Options, spec: str) -> tuple[int, ...]:
        """The blocks that ``--layer=spec`` names when it names several (``all``, ``0,3,6``,
        ``4-7``), one graph each; only families with per-block graphs have this."""
        raise ConfigError(f"--layer={spec} asks for one graph per block, which only the language "
                          f"models build; --model={self.name} builds one graph (give --layer as "
                          "one number or leave it out)")

    def load_blocks(self, opts: Options, blocks: tuple[int, ...]
                    ) -> tuple[SectionedModel, list[SectionedModel]]:
        """The model cut for each block's graph (as :meth:`load_for_build` cuts it for that block
        alone), and one cut at the node layers of all of them, for statistics in one pass
        (:func:`libjax.pipeline.build_many`)."""
        raise NotImplementedError

    @abc.abstractmethod
    def data(self, opts: Options) -> Data:
        """The build's inputs."""

    @abc.abstractmethod
    def model_id(self, opts: Options) -> str:
        """A string identifying the weights (recorded with every build)."""

    def ablation_defaults(self, opts: Options) -> Optional[dict]:
        """The paper's ablation settings for this model: evaluation ``split``, ``metric``,
        ``batch_size`` and the exponential schedule's ``ablate_every_vec_cutoff``/``exp_base``;
        None (the default) for a model without labelled data to ablate on."""
        return None

    def evaluation_data(self, opts: Options, build_info: dict, data_dir: Optional[str]) -> Data:
        """What ablations of a build (``build_info``: its ``build.json``) score on, with labels:
        by default :meth:`data` on ``opts`` (the evaluation split), from ``data_dir`` if given."""
        return self.data(dataclasses.replace(opts, data_dir=data_dir or opts.data_dir))

    def sections(self, node_layers: Sequence[str]) -> Optional[dict[str, str]]:
        """The part of the model (e.g. ``attention``, ``MLP``) that the transition out of each
        node layer belongs to, for per-part edge counts; None (the default) where there are no
        such parts."""
        return None

    def feature_cards(self, opts: Options, model: SectionedModel, graph, data: Data,
                      node_layers, **options) -> dict:
        """Per node layer, the feature cards of its directions
        (:mod:`libjax.analysis.feature_cards`; default: none)."""
        return {}

    def direction_labels(self, opts: Options, graph) -> Optional[dict[str, list[str]]]:
        """A short text per direction of each node layer of ``graph`` (built with ``opts``), for
        graph plots (default: none)."""
        return None
