"""What a build computes: :class:`BuildConfig`, its validation, and the integration points of
a node layer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any, Optional, Union

import numpy as np

from libjax.errors import ConfigError
from libjax.kinds import NAMES, BasisKind, class_of
from libjax.kinds import get as get_kind
from libjax.method import integration
from libjax.runtime import precision as precision_lib

BASES = NAMES


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What to build (defaults: the paper's LIB configuration, docs/method.md 5).

    Attributes:
      basis: the basis kind (:mod:`libjax.kinds`): ``lib`` (the jacobian formula), ``pca``,
        ``neuron``, or a kind object such as a :class:`~libjax.kinds.GivenBasis` (``given``:
        a user's directions, e.g. an SAE decoder).
      integration, n_intervals: quadrature rule for the basis and edges (docs/method.md 2.5); either
        may be a dict keyed by node layer or module prefix.
      n_stochastic_sources_basis_pos, n_stochastic_sources_basis_hidden: Rademacher sources
        replacing the exact sum over output positions / hidden dims in ``M'`` (None = exact).
      n_stochastic_sources_edges: the same for output positions in the edges.
      center: centre the Gram matrices (constant direction first).
      isolate_ln_var: keep a LayerNorm variance coordinate that the model declares
        (:attr:`libjax.model.NodeLayer.variance`) as its own direction.
      truncation_threshold: drop directions with eigenvalue below this.
      relative_truncation_threshold: LIB bases only: also drop the directions (other than the
        constant and an isolated variance) whose Gram eigenvalue or Lambda is below this fraction
        of the layer's largest; None: the policy's default (:data:`RELATIVE_TRUNCATION`). PCA
        never divides by an eigenvalue, so it keeps every direction above the absolute threshold.
      precision: ``float64`` (every step in float64) or ``mixed`` (steps in float32, sums merged
        on the host in float64); see :mod:`libjax.runtime.precision`.
      rotate_final_node_layer: give the last node layer a PCA basis.
      compute_edges: compute the edge matrices.
      batch_size, gram_batch_size, edge_batch_size: samples per step of each phase.
      memory_budget_gb: bounds the probes processed at once in ``M'`` and edges.
      seed: seed of the stochastic sources.
      fast_paths: use the structure-aware paths where the model allows them: closed forms for
        attention, MLP and LayerNorm sections, one probe per output direction for positionwise
        sections. They compute the same numbers as the general VJP path (stochastic estimates
        with the same signs), except where the exact sum costs no more than the estimate:
        positionwise sections without a form and LayerNorm forms give the exact edges where edge
        sources were asked for, and MLP and LayerNorm forms the exact ``M'`` where hidden
        sources were asked for. False reproduces the reference's computation everywhere.
      skip_positions: sequence positions left out of the statistics, ``M'`` and the edges
        (docs/method.md 1.13), e.g. ``(0,)`` for a language model's first token, whose massive
        activation dominates the sums; ablations neither ablate nor score them. Default: none
        (the reference keeps every position). Recorded in ``build.json`` only when not empty.
    """

    basis: Union[str, BasisKind] = "lib"
    integration: Any = "gradient"
    n_intervals: Any = 0
    n_stochastic_sources_basis_pos: Optional[int] = None
    n_stochastic_sources_basis_hidden: Optional[int] = None
    n_stochastic_sources_edges: Optional[int] = None
    center: bool = True
    isolate_ln_var: bool = True
    truncation_threshold: float = 1e-15
    relative_truncation_threshold: Optional[float] = None
    rotate_final_node_layer: bool = False
    compute_edges: bool = True
    batch_size: int = 4096
    gram_batch_size: Optional[int] = None
    edge_batch_size: Optional[int] = None
    memory_budget_gb: float = 0.25
    seed: int = 0
    fast_paths: bool = True
    precision: str = "float64"
    skip_positions: tuple[int, ...] = ()

    def __post_init__(self):  # one position, or a list read back from build.json: a tuple
        skip = self.skip_positions
        object.__setattr__(self, "skip_positions",
                           (skip,) if isinstance(skip, (int, np.integer)) else tuple(skip))

    @property
    def kind(self) -> BasisKind:
        """The basis kind object ``basis`` names or is."""
        return get_kind(self.basis)

    @property
    def relative_threshold(self) -> float:
        """The relative truncation threshold in force: the one given, else the policy's."""
        given = self.relative_truncation_threshold
        return RELATIVE_TRUNCATION[self.precision] if given is None else given

    def validate(self, model) -> None:
        """Reject option combinations the method does not define (docs/method.md 5 validation)."""
        kind = self.kind
        stochastic_basis = (self.n_stochastic_sources_basis_pos,
                            self.n_stochastic_sources_basis_hidden)
        if any(s is not None for s in stochastic_basis) and not kind.needs_m_prime:
            raise ConfigError(f"stochastic basis sources only apply to the lib (jacobian) basis, "
                              f"which is made from M'; the {kind.name} basis is not")
        sources = stochastic_basis + (self.n_stochastic_sources_edges,)
        for s in sources:
            if s is not None and s < 1:
                raise ConfigError(f"a number of stochastic sources must be >= 1, got {s}")
        if (self.n_stochastic_sources_basis_pos or self.n_stochastic_sources_edges) and \
                not model.positional:
            raise ConfigError(f"stochastic position sources need activations with a sequence "
                              f"axis; model {model.name!r} has none")
        for size in (self.batch_size, self.gram_batch_size, self.edge_batch_size):
            if size is not None and size < 1:
                raise ConfigError(f"batch sizes must be >= 1, got {size}")
        if not 0 <= self.truncation_threshold < math.inf:
            raise ConfigError(f"truncation_threshold must be a finite number >= 0, got "
                              f"{self.truncation_threshold}")
        if self.center and self.truncation_threshold >= 1:
            raise ConfigError(f"truncation_threshold={self.truncation_threshold} would drop the "
                              "constant direction, whose centred Gram eigenvalue is 1; use a "
                              "threshold below 1")
        rel = self.relative_truncation_threshold
        if rel is not None and not 0 <= rel < 1:
            raise ConfigError(f"relative_truncation_threshold must be in [0, 1), got {rel}")
        precision_lib.check(self.precision)
        if not 0 < self.memory_budget_gb < math.inf:
            raise ConfigError(f"memory_budget_gb must be a finite number > 0, got "
                              f"{self.memory_budget_gb}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"the seed must be in [0, 2**63), got {self.seed}")
        if self.rotate_final_node_layer and self.center and model.layers[-1].constant is None:
            raise ConfigError(f"a centred PCA rotation of the {model.node_layers[-1]!r} node layer "
                              "is undefined (it has no constant coordinate); end the node layers "
                              "before it or do not rotate the final layer")
        for name in model.node_layers[:-1]:
            points(self, name)  # raises on a bad rule or interval count
        kind.check(self, model)
        if self.skip_positions:
            check_skip_positions(self.skip_positions, model)

    def to_json(self) -> dict:
        record = dataclasses.asdict(dataclasses.replace(self, basis=self.kind.name))
        record.update(self.kind.record())  # e.g. a given basis's digest (none for lib/pca/neuron)
        if not self.skip_positions:  # the default: build records as before the option existed
            del record["skip_positions"]
        else:
            record["skip_positions"] = list(self.skip_positions)
        return record


def skip_positions_of(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The positions a build left out, from its recorded configuration (none if not recorded)."""
    return tuple(int(p) for p in config.get("skip_positions", ()))


def check_skip_positions(skip, model) -> None:
    """``skip`` must be distinct positions of ``model``'s node layers, which must all have the
    same positions (a section that keeps only some positions, like modular addition's last one,
    would leave it unclear which position is which), and must leave one position."""
    if not model.positional:
        raise ConfigError(f"skip_positions={list(skip)}: model {model.name!r} has no sequence "
                          "positions to skip; leave skip_positions empty")
    counts = {layer.name: layer.positions for layer in model.layers}
    if len(set(counts.values())) != 1:
        raise ConfigError(f"skip_positions needs node layers that all keep every position; these "
                          f"have {counts} positions: choose node layers before the model drops "
                          "positions, or leave skip_positions empty")
    n_pos = model.layers[0].positions
    bad = [p for p in skip if isinstance(p, bool) or not isinstance(p, (int, np.integer))]
    if bad:
        raise ConfigError(f"skip_positions must be whole numbers, got {bad}")
    wrong = sorted(p for p in skip if not 0 <= p < n_pos)
    if wrong:
        raise ConfigError(f"skip_positions {wrong} are outside the context: positions run from 0 "
                          f"to {n_pos - 1} (negative positions are not counted from the end)")
    if len(set(skip)) != len(skip):
        raise ConfigError(f"skip_positions {list(skip)} lists a position more than once")
    if len(set(skip)) >= n_pos:
        raise ConfigError(f"skip_positions {list(skip)} leaves none of the {n_pos} positions; "
                          "keep at least one")


# The float64 policy keeps the paper's absolute threshold only. Float32 steps leave round-off of
# about eps32 = 1.2e-7 times the largest eigenvalue in every Gram and M' entry (more after sums
# and the D^-1/2 scaling), so directions below ~10 eps32 of the largest carry no signal: 1e-6
# drops them (measured: BUILD_NOTES.md "Precision policy").
RELATIVE_TRUNCATION = {"float64": 0.0, "mixed": 1e-6}


def points(cfg: BuildConfig, node_layer: str):
    try:
        rule = integration.for_layer(cfg.integration, node_layer)
        n = integration.for_layer(cfg.n_intervals, node_layer)
        return integration.points(rule, int(n))
    except ValueError as err:
        raise ConfigError(str(err)) from None


SOURCE_FIELDS = ("n_stochastic_sources_basis_pos", "n_stochastic_sources_basis_hidden",
                 "n_stochastic_sources_edges")


def resolve(values: Mapping[str, Any], given: Collection[str],
            model_defaults: Mapping[str, Any]) -> BuildConfig:
    """The configuration a user asked for: ``values`` of :class:`BuildConfig` fields (None:
    unset), of which ``given`` were stated explicitly, over a model's paper defaults.

    Precedence: a stated value, then the model's default, then a value that was not stated (an
    option's own default), then :class:`BuildConfig`'s. The model's stochastic ``M'`` sources
    apply only to the LIB basis; a source count of 0 asks for the exact sums (None)."""
    if not class_of(values.get("basis") or "lib").needs_m_prime:
        model_defaults = {k: v for k, v in model_defaults.items()
                          if not k.startswith("n_stochastic_sources_basis")}
    fields = {k: v for k, v in values.items() if v is not None}
    fields.update({k: v for k, v in model_defaults.items() if k not in given})
    for k in SOURCE_FIELDS:
        if fields.get(k) is not None and fields[k] < 0:
            raise ConfigError(f"--{k} must be >= 0 (0: exact sums), got {fields[k]}")
        if fields.get(k) == 0:
            fields[k] = None
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(BuildConfig)})
    if unknown:
        raise ConfigError(f"unknown build options {unknown}")
    return BuildConfig(**fields)
