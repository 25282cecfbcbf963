"""Basis kinds: what a node layer's basis is made from (docs/method.md 1.7, 1.14).

A kind is an object with one small protocol, :class:`BasisKind`: its ``name`` (what a build
records and the command line's ``--basis`` says), whether the pipeline must compute ``M'`` for it
(``needs_m_prime``), whether ablations keep its reconstruction error as a node of its own
(``keeps_error``), and ``make(layer) -> Basis`` from a node layer's statistics. The pipeline asks
the kind; it never compares names::

    BuildConfig(basis="lib")                                  # by name: lib, pca, neuron
    BuildConfig(basis=GivenBasis.load("dirs.npz"))            # a user's directions
    BuildConfig(basis=GivenBasis.from_bases(graph.bases))     # another graph's bases

The linear algebra stays in :mod:`libjax.basis`; this module only chooses it. A new kind is a
subclass of :class:`BasisKind` (and, to be named on the command line, an entry of
:data:`KINDS`).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import ClassVar, Optional, Union

import numpy as np

from libjax.basis import Basis, lib_basis, neuron_basis, pca_basis
from libjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """What a kind may build one node layer's basis from.

    Attributes:
      name, width: the node layer and its (folded) width ``d``.
      mean, gram: its mean ``(d,)`` and Gram matrix ``(d, d)`` (None where the build has none).
      m_prime: ``M'`` ``(d, d)`` where the kind needs it and the layer has a next one, else None.
      center, isolate_var, threshold: as :class:`~libjax.pipeline.BuildConfig` says for it.
      relative: the relative truncation in force (the precision policy's unless given).
      given_relative: the relative truncation the user gave (0 if none).
    """

    name: str
    width: int
    mean: Optional[np.ndarray]
    gram: Optional[np.ndarray]
    m_prime: Optional[np.ndarray]
    center: bool
    isolate_var: bool
    threshold: float
    relative: float
    given_relative: float


class BasisKind(abc.ABC):
    """How a build makes a node layer's basis.

    Attributes:
      name: the kind's name, recorded in the build and in every basis it makes.
      needs_m_prime: the pipeline computes ``M'`` (a pass over the data per layer) for it.
      keeps_error: node and edge ablations keep the reconstruction error ``f - f C C^+`` as a
        node that is never ablated (docs/method.md 1.14). LIB and PCA drop it with their first
        ablated direction, as the reference does.
    """

    name: ClassVar[str]
    needs_m_prime: ClassVar[bool] = False
    keeps_error: ClassVar[bool] = False

    @abc.abstractmethod
    def make(self, layer: LayerStats) -> Basis:
        """The basis of one node layer."""

    def check(self, cfg, model) -> None:
        """Refuse a build configuration or model this kind cannot serve (``ConfigError``);
        every configuration and model by default."""
        return None

    def gives_final(self, node_layer: str) -> bool:
        """Whether the kind itself gives the final node layer's basis (else the layer is kept in
        its neurons, or rotated by PCA with ``rotate_final_node_layer``)."""
        return False

    def record(self) -> dict:
        """What the build record keeps beside the name, to tell this kind's builds apart."""
        return {}

    @classmethod
    def constant_first(cls, b: Basis, centred: bool) -> bool:
        """Whether node 0 of ``b`` is the constant direction (an edge ablation keeps its edges
        for free)."""
        return centred

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lib(BasisKind):
    """The Local Interaction Basis (the reference's ``jacobian`` formula, docs/method.md 1.7)."""

    name = "lib"
    needs_m_prime = True

    def make(self, layer: LayerStats) -> Basis:
        return lib_basis(layer.gram, layer.mean, layer.m_prime, layer.center,
                                   layer.isolate_var, layer.threshold, layer.relative)


class PCA(BasisKind):
    """The centred Gram eigenvectors, unscaled (the reference's ``svd``).

    Only a user's relative truncation applies: the precision policy's is for bases that divide by
    eigenvalues (:func:`libjax.basis.pca_basis`)."""

    name = "pca"

    def make(self, layer: LayerStats) -> Basis:
        return pca_basis(layer.gram, layer.mean, layer.center, layer.isolate_var,
                                   layer.threshold, layer.given_relative)


class Neuron(BasisKind):
    """The identity: every neuron is a node."""

    name = "neuron"

    def make(self, layer: LayerStats) -> Basis:
        return neuron_basis(layer.width)

    @classmethod
    def constant_first(cls, b: Basis, centred: bool) -> bool:
        """Node 0 is neuron 0, not the constant (which is the last neuron)."""
        return False

    def check(self, cfg, model) -> None:
        if cfg.center:
            raise ConfigError("the neuron basis cannot be centred; pass --nocenter with "
                              "--basis=neuron")


def _readout_tolerance(*matrices) -> float:
    return 1e-8 * max(1.0, *(float(np.abs(m).max(initial=0.0)) for m in matrices))


class GivenBasis(BasisKind):
    """A basis given by the user, e.g. an SAE's or a transcoder's decoder (docs/method.md 1.14).

    Per node layer, ``directions[name]`` ``(n, d)`` holds ``n`` directions as rows in the layer's
    folded coordinates (constant coordinate last); they are ``C^+``. ``readouts[name]``
    ``(d, n)``, optional, is ``C`` (``f_hat = f @ C``); without it ``C = pinv(C^+)``, the
    least-squares coordinates. ``n`` may be below, at or above ``d``. Directions of width
    ``d - 1`` (an SAE decoder over the residual stream) get a zero constant coordinate.

    Node layers must be the graph's: every node layer but the last, and the last one optionally
    (otherwise it follows ``rotate_final_node_layer``). The directions are kept in the order
    given: node ablation zeroes the last ones first. Where ``C C^+ != I`` the reconstruction error
    is a node of its own, kept by every ablation (``keeps_error``).
    """

    name = "given"
    keeps_error = True

    def __init__(self, directions: Mapping[str, np.ndarray],
                 readouts: Optional[Mapping[str, np.ndarray]] = None, source: str = ""):
        self.source = source
        self.directions = {str(k): self._matrix(v, f"the directions of {k!r}")
                           for k, v in directions.items()}
        readouts = dict(readouts or {})
        unmatched = sorted(set(readouts) - set(self.directions))
        if unmatched:
            raise ConfigError(f"{self._where()}readouts for {unmatched} but no directions there; "
                              "give each readout with its directions")
        self.readouts = {str(k): self._matrix(v, f"the readout of {k!r}")
                         for k, v in readouts.items()}
        if not self.directions:
            raise ConfigError(f"{self._where()}no directions given; give one (n, d) array per "
                              "node layer, named by the node layer")
        digest = hashlib.sha256()
        for name in sorted(self.directions):
            for tag, arrays in (("directions", self.directions), ("readout", self.readouts)):
                if name in arrays:
                    a = np.ascontiguousarray(arrays[name])
                    digest.update(f"{tag}:{name}:{a.shape}".encode())
                    digest.update(a.tobytes())
        self.sha256 = digest.hexdigest()[:16]
        self._bases: dict[str, Basis] = {}

    def _where(self) -> str:
        return f"basis file {self.source}: " if self.source else "given basis: "

    def _matrix(self, value, what: str) -> np.ndarray:
        a = np.asarray(value)
        if a.ndim != 2 or not (np.issubdtype(a.dtype, np.floating)
                               or np.issubdtype(a.dtype, np.integer)):
            raise ConfigError(f"{self._where()}{what} must be a 2-d array of numbers, got shape "
                              f"{a.shape} of {a.dtype}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"{self._where()}{what}: NaN or inf in "
                              f"{int(np.sum(~np.isfinite(a)))} entries; give finite numbers")
        return a

    # --- files -------------------------------------------------------------------------------

    READOUT_PREFIX: ClassVar[str] = "readout:"

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> GivenBasis:
        """Read a basis file: an ``.npz`` with one ``(n, d)`` array of directions per node layer,
        named by the node layer, and optionally ``readout:<layer>`` ``(d, n)`` arrays."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError) as err:
            raise ConfigError(f"cannot read basis file {path}: {err}; give an .npz file with "
                              "one (n, d) array of directions per node layer") from None
        directions = {k: v for k, v in arrays.items() if not k.startswith(cls.READOUT_PREFIX)}
        readouts = {k[len(cls.READOUT_PREFIX):]: v for k, v in arrays.items()
                    if k.startswith(cls.READOUT_PREFIX)}
        return cls(directions, readouts, source=os.fspath(path))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the file :meth:`load` reads."""
        arrays = dict(self.directions)
        arrays.update({self.READOUT_PREFIX + k: v for k, v in self.readouts.items()})
        np.savez(os.fspath(path), **arrays)

    @classmethod
    def from_bases(cls, bases: Mapping[str, Basis], readouts: bool = True) -> GivenBasis:
        """The bases of a graph (``graph.bases``) as a given basis: ``C^+`` as directions, and
        ``C`` as readouts unless ``readouts`` is False (then ``C = pinv(C^+)``)."""
        return cls({k: b.C_pinv for k, b in bases.items()},
                   {k: b.C for k, b in bases.items()} if readouts else None)

    # --- the protocol ------------------------------------------------------------------------

    def check(self, cfg, model) -> None:
        layers = {layer.name: layer for layer in model.layers}
        unknown = sorted(set(self.directions) - set(layers))
        if unknown:
            raise ConfigError(f"{self._where()}directions for {unknown}, which are not node "
                              f"layers of the model; its node layers are "
                              f"{', '.join(model.node_layers)}")
        missing = [n for n in model.node_layers[:-1] if n not in self.directions]
        if missing:
            raise ConfigError(f"{self._where()}no directions for node layer(s) {missing}; give "
                              f"directions for every node layer but the last "
                              f"({', '.join(model.node_layers[:-1])})")
        last = model.node_layers[-1]
        if last in self.directions and cfg.rotate_final_node_layer:
            raise ConfigError(f"{self._where()}directions for the final node layer {last!r}, and "
                              "rotate_final_node_layer asks for its PCA basis; drop one of them")
        for name in self.directions:
            self._bases[name] = self._basis(name, layers[name])

    def _basis(self, name: str, layer) -> Basis:
        d_pinv = self.directions[name]
        width = layer.width
        if d_pinv.shape[1] == width - 1 and layer.constant is not None:
            d_pinv = np.concatenate([d_pinv, np.zeros((len(d_pinv), 1))], axis=1)
        if d_pinv.shape[1] != width:
            extra = f" (or {width - 1} without the constant)" if layer.constant is not None else ""
            raise ConfigError(f"{self._where()}the directions of {name!r} have width "
                              f"{self.directions[name].shape[1]}; node layer {name!r} has width "
                              f"{width}{extra}: give one direction per row")
        n = len(d_pinv)
        norms = np.linalg.norm(d_pinv, axis=1)
        if n == 0 or not np.all(norms > 1e-12 * norms.max(initial=0.0)):
            zero = np.flatnonzero(~(norms > 1e-12 * norms.max(initial=0.0))).tolist()
            raise ConfigError(f"{self._where()}the directions of {name!r} "
                              + (f"include zero rows {zero[:10]}" if n else "are empty")
                              + "; every direction must be nonzero")
        if name in self.readouts:
            c = self.readouts[name]
            if c.shape[0] == width - 1 and layer.constant is not None:
                c = np.concatenate([c, np.zeros((1, c.shape[1]))], axis=0)
            if c.shape != (width, n):
                raise ConfigError(f"{self._where()}the readout of {name!r} has shape "
                                  f"{self.readouts[name].shape}; its {n} directions of width "
                                  f"{width} need ({width}, {n})")
            tol = _readout_tolerance(c, d_pinv)
            if (np.abs(d_pinv @ c @ d_pinv - d_pinv).max() > tol
                    or np.abs(c @ d_pinv @ c - c).max() > tol):
                raise ConfigError(f"{self._where()}the readout of {name!r} does not read its "
                                  "directions back (C^+ C C^+ != C^+ or C C^+ C != C); give "
                                  "a generalised inverse of the directions, or no readout "
                                  "(then C = pinv(C^+))")
        else:
            s = np.linalg.svd(d_pinv, compute_uv=False)
            rank = int(np.sum(s > RANK_RTOL * s[0]))
            if n <= width and rank < n:
                raise ConfigError(f"{self._where()}the {n} directions of {name!r} are linearly "
                                  f"dependent (rank {rank}): fewer directions than the width "
                                  f"{width} must be independent to have one coordinate each; "
                                  "drop the dependent ones or give a readout")
            c = np.linalg.pinv(d_pinv, rcond=RANK_RTOL)
        return Basis(C=c, C_pinv=d_pinv, kind=self.name)

    def gives_final(self, node_layer: str) -> bool:
        return node_layer in self.directions

    def make(self, layer: LayerStats) -> Basis:
        if layer.name not in self._bases:
            raise ConfigError(f"{self._where()}no checked directions for {layer.name!r}; a "
                              "build checks the basis against its model first")
        return self._bases[layer.name]

    def record(self) -> dict:
        return {"given_basis": {"sha256": self.sha256,
                                "directions": {k: list(v.shape)
                                               for k, v in sorted(self.directions.items())},
                                "readouts": sorted(self.readouts)}}

    @classmethod
    def constant_first(cls, b: Basis, centred: bool) -> bool:
        """Node 0 reads the constant coordinate alone (as a LIB or PCA basis passed in does)."""
        c = np.asarray(b.C)
        return bool(np.all(c[:-1, 0] == 0) and c[-1, 0] != 0)

    def __eq__(self, other) -> bool:
        return isinstance(other, GivenBasis) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.shape[0]}x{v.shape[1]}" for k, v in self.directions.items())
        return f"GivenBasis({shapes})"


# Singular values below this fraction of the largest count as zero in a given basis's pinv.
RANK_RTOL = 1e-10

KINDS: dict[str, BasisKind] = {k.name: k for k in (Lib(), PCA(), Neuron())}
CLASSES: dict[str, type[BasisKind]] = {c.name: c for c in (Lib, PCA, Neuron, GivenBasis)}
NAMES = tuple(CLASSES)


def get(spec: Union[str, BasisKind]) -> BasisKind:
    """The kind ``spec`` names, or ``spec`` itself."""
    if isinstance(spec, BasisKind):
        return spec
    if spec in KINDS:
        return KINDS[spec]
    if spec in CLASSES:
        raise ConfigError(f"the {spec} basis needs its data: pass basis=GivenBasis.load(path) "
                          "(on the command line --basis=given --basis_file=PATH)")
    raise ConfigError(f"unknown basis {spec!r}; choose one of {', '.join(NAMES)}")


def kind_of(b: Basis) -> type[BasisKind]:
    """The kind (class) that made a stored basis, for what it says about ablating it."""
    return CLASSES[b.kind]


def class_of(spec: Union[str, BasisKind]) -> type[BasisKind]:
    """The class of the kind ``spec`` names or is (a name alone may not make a kind)."""
    if isinstance(spec, BasisKind):
        return type(spec)
    if spec not in CLASSES:
        raise ConfigError(f"unknown basis {spec!r}; choose one of {', '.join(NAMES)}")
    return CLASSES[spec]


def from_command_line(name: str, basis_file: Optional[str]) -> Union[str, BasisKind]:
    """What ``--basis=NAME`` with ``--basis_file=PATH`` asks for: the name, or for ``given`` the
    basis read from the file."""
    if name == GivenBasis.name:
        if not basis_file:
            raise ConfigError("--basis=given needs --basis_file=PATH: an .npz with one (n, d) "
                              "array of directions per node layer (docs/method.md 1.14)")
        return GivenBasis.load(basis_file)
    if basis_file:
        raise ConfigError(f"--basis_file is read only with --basis=given (got --basis={name})")
    return name
