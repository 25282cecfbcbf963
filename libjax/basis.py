"""The bases as pure float64 linear algebra: ``neuron``, ``pca`` and ``lib``
(docs/method.md 1.5-1.9), and the reconstruction error of any basis (1.13). Which of them a build
makes is its basis kind's choice (:mod:`libjax.kinds`).

Everything here is NumPy on the host: the matrices are ``d x d`` with ``d`` at most a few thousand,
host LAPACK is deterministic on every backend, and TPUs have no float64 ``eigh``. A researcher who
has a layer's Gram matrix, mean and ``M'`` needs nothing else::

    from libjax import basis
    b = basis.lib_basis(gram, mean, m_prime, center=True)
    f_hat = f @ b.C                # LIB coordinates, ordered by Lambda (const direction first)
    f_back = f_hat @ b.C_pinv

Conventions: activations are row vectors whose last coordinate is the constant 1 of the folded
biases; ``C`` is ``orig x rib``; with ``center`` the first LIB/PCA direction is the constant one.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from flax import struct

from libjax.errors import BasisError, NumericalError


@struct.dataclass
class Basis:
    """One node layer's basis. ``f_hat = f @ C``; ``f ~= f_hat @ C_pinv``.

    Attributes:
      C, C_pinv: ``(orig, rib)`` and ``(rib, orig)``; ``C_pinv @ C = I`` (except for an
        overcomplete given basis, docs/method.md 1.14).
      W, W_pinv: centred projection onto the kept Gram eigenvectors, ``(orig, k)``, ``(k, orig)``
        (None for a given basis).
      Lambda: LIB eigenvalues of the kept directions, in ``C``'s column order (``None`` for PCA
        and neuron bases).
      gram_eigenvalues: ``D``, the kept Gram eigenvalues in ``W``'s column order (PCA variances).
      V: ``(k, k)`` eigenvectors of ``M`` (LIB only).
      kind: the name of the kind that made it (:mod:`libjax.kinds`).
    """

    C: np.ndarray
    C_pinv: np.ndarray
    W: Optional[np.ndarray] = None
    W_pinv: Optional[np.ndarray] = None
    Lambda: Optional[np.ndarray] = None
    gram_eigenvalues: Optional[np.ndarray] = None
    V: Optional[np.ndarray] = None
    kind: str = struct.field(pytree_node=False, default="lib")

    @property
    def orig_dim(self) -> int:
        return self.C.shape[0]

    @property
    def dim(self) -> int:
        return self.C.shape[1]


def eigh_descending(matrix) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix in float64: ``|eigenvalues|`` sorted descending
    and the matching eigenvector columns (docs/method.md 1.5 step 1)."""
    vals, vecs = np.linalg.eigh(np.asarray(matrix, np.float64))
    vals = np.abs(vals)
    order = np.argsort(-vals, kind="stable")
    return vals[order], vecs[:, order]


def centring_matrices(mean, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """``Y`` and ``Y^-1`` with ``(f Y)_j = f_j - mu_j`` for ``j < last`` and ``(f Y)_last = 1``
    when ``f_last = 1`` (docs/method.md 1.6); identities without centring."""
    dim = len(mean)
    y, y_inv = np.eye(dim), np.eye(dim)
    if center:
        y[-1, :-1] = -np.asarray(mean[:-1], np.float64)
        y_inv[-1, :-1] = np.asarray(mean[:-1], np.float64)
    return y, y_inv


def _masked_eigh(matrix, n_masked: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``n_masked`` coordinates as they are and decompose the rest:
    eigenvalues ``[M_00, ..., eig(M[n:, n:]) desc]``, vectors ``blockdiag(I_n, V_sub)``."""
    dim = matrix.shape[0]
    vals_sub, vecs_sub = eigh_descending(matrix[n_masked:, n_masked:])
    vals = np.concatenate([np.diag(matrix)[:n_masked], vals_sub])
    vecs = np.zeros((dim, dim))
    vecs[:n_masked, :n_masked] = np.eye(n_masked)
    vecs[n_masked:, n_masked:] = vecs_sub
    return vals, vecs


def gram_eigenbasis(gram, center: bool, isolate_var: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors ``U`` (columns) and eigenvalues ``D`` of a Gram matrix, ordered
    ``[const (if center), var (if isolate_var), rest by D descending]`` (docs/method.md 1.5, 8.5).

    With centring the Gram matrix is ``blockdiag(Cov, 1)`` analytically, so the constant direction
    ``e_last`` (eigenvalue ``G[-1, -1]``) is inserted exactly instead of being searched for among
    the eigenvectors of the whole matrix. With ``isolate_var`` coordinate 0 (a LayerNorm variance)
    is kept as its own direction and its correlations with the rest are ignored, as the reference
    does.
    """
    gram = np.asarray(gram, np.float64)
    dim = gram.shape[0]
    fixed = ([dim - 1] if center else []) + ([0] if isolate_var else [])
    rest = np.array([i for i in range(dim) if i not in fixed])
    vals_rest, vecs_rest = eigh_descending(gram[np.ix_(rest, rest)])
    u = np.zeros((dim, dim))
    for col, idx in enumerate(fixed):
        u[idx, col] = 1.0
    u[rest, len(fixed):] = vecs_rest
    d = np.concatenate([gram[fixed, fixed], vals_rest])
    return u, d


def _check_finite(name: str, matrix) -> None:
    if not np.all(np.isfinite(matrix)):
        raise NumericalError(f"{name} contains NaN or inf; the activations or the model are not "
                             "finite (check the checkpoint and the input data)")


def _relative_keep(values, n_fixed: int, relative: float) -> np.ndarray:
    """Which of ``values`` the relative truncation keeps: the first ``n_fixed`` (the constant and
    an isolated variance) always, the rest where at least ``relative`` times their largest."""
    keep = np.ones(len(values), bool)
    rest = values[n_fixed:]
    if relative > 0 and len(rest):
        keep[n_fixed:] = rest >= relative * rest.max()
    return keep


def _gram_projection(gram, mean, center: bool, isolate_var: bool, threshold: float,
                     relative: float = 0.0):
    """``W = Y U``, ``W^+ = U^T Y^-1`` and ``D`` after the first truncation (``D > threshold``,
    and not below ``relative`` of the largest free eigenvalue)."""
    _check_finite("the Gram matrix", gram)
    u, d = gram_eigenbasis(gram, center, isolate_var)
    fixed = ["constant"] * center + ["LayerNorm-variance"] * isolate_var
    for name, value in zip(fixed, d):
        if value <= threshold:
            advice = " or disable LN-variance isolation" if name != "constant" else ""
            raise BasisError(f"the {name} direction has Gram eigenvalue {value:.3g} <= the "
                             f"truncation threshold {threshold}, so it would be dropped; lower "
                             f"the threshold{advice}")
    keep = (d > threshold) & _relative_keep(d, len(fixed), relative)
    if not np.any(keep):
        raise BasisError(f"every Gram eigenvalue is <= the truncation threshold {threshold} "
                         f"(largest {d.max():.3g}), so no direction is left: the activations are "
                         "constant, or the threshold is too high (the paper's is 1e-15)")
    u, d = u[:, keep], d[keep]
    y, y_inv = centring_matrices(mean, center)
    return y @ u, u.T @ y_inv, d


def neuron_basis(dim: int) -> Basis:
    """The identity basis (no truncation, no centring)."""
    eye = np.eye(dim)
    return Basis(C=eye, C_pinv=eye, W=eye, W_pinv=eye, kind="neuron")


def pca_basis(gram, mean, center: bool = True, isolate_var: bool = False,
              threshold: float = 1e-15, relative: float = 0.0) -> Basis:
    """PCA basis (the reference's ``svd`` formula): ``C = W`` (centred Gram eigenvectors, no
    scaling).

    ``relative`` is 0 under either precision policy unless a user sets it: float32 round-off in a
    Gram matrix only turns the directions of its smallest eigenvalues among themselves, which is
    harmful where a basis divides by their square roots (``lib_basis``), not here; dropping them
    drops real directions, of tiny variance but large, cancelling edges (BUILD_NOTES.md
    "Precision policy")."""
    w, w_pinv, d = _gram_projection(gram, mean, center, isolate_var, threshold, relative)
    return Basis(C=w, C_pinv=w_pinv, W=w, W_pinv=w_pinv, gram_eigenvalues=d, kind="pca")


def lib_basis(gram, mean, m_prime, center: bool = True, isolate_var: bool = False,
              threshold: float = 1e-15, relative: float = 0.0) -> Basis:
    """The LIB (``jacobian``) basis ``C = Y U D^-1/2 V Lambda^1/2`` (docs/method.md 1.6-1.9).

    Args:
      gram, mean: the layer's Gram matrix and mean (:mod:`libjax.method.stats`).
      m_prime: ``M' = E[sum_s J_s^T J_s]`` of the next section in the next layer's basis
        (:mod:`libjax.method.vjp`), in this layer's neuron basis.
      center: the Gram matrix is centred and the constant direction is kept first.
      isolate_var: coordinate 0 is a LayerNorm variance kept as its own direction.
      threshold: directions with Gram eigenvalue or Lambda below it are dropped.
      relative: so are the free directions whose Gram eigenvalue or Lambda is below this
        fraction of the largest (float32 round-off; 0: none).
    """
    _check_finite("M'", m_prime)
    w, w_pinv, d = _gram_projection(gram, mean, center, isolate_var, threshold, relative)
    sqrt_d = np.sqrt(d)
    r, r_pinv = w / sqrt_d, sqrt_d[:, None] * w_pinv
    m = r_pinv @ np.asarray(m_prime, np.float64) @ r_pinv.T
    n_masked = int(center) + int(isolate_var)
    lam, v = _masked_eigh(m, n_masked)
    # Second truncation: the masked directions stay first, the rest is already sorted by Lambda,
    # and as many trailing directions are dropped as there are Lambdas below the threshold.
    n_small = int(np.sum((lam < threshold) | ~_relative_keep(lam, n_masked, relative)))
    if np.any(lam[:n_masked] < threshold):
        raise BasisError(f"a fixed direction has Lambda {lam[:n_masked]} < truncation threshold "
                         f"{threshold}; the next layer does not depend on it. Lower the threshold.")
    n_keep = len(lam) - n_small
    if n_keep == 0:
        raise BasisError(f"every Lambda is below the truncation threshold {threshold} (largest "
                         f"{lam.max():.3g}): the next layer does not depend on this one")
    lam_kept, v_kept = lam[:n_keep], v[:, :n_keep]
    if np.any(lam_kept <= 0):  # only possible with threshold 0
        raise BasisError(f"{int(np.sum(lam_kept <= 0))} kept direction(s) have Lambda exactly 0 "
                         "and cannot be scaled by 1/sqrt(Lambda); use a truncation threshold > 0")
    sqrt_lam = np.sqrt(lam_kept)
    c = r @ v_kept * sqrt_lam
    c_pinv = (v_kept.T @ r_pinv) / sqrt_lam[:, None]
    return Basis(C=c, C_pinv=c_pinv, W=w, W_pinv=w_pinv, Lambda=lam_kept, gram_eigenvalues=d, V=v,
                 kind="lib")


# Singular values of ``I - C C^+`` below this are round-off: the basis reconstructs exactly there.
ERROR_ATOL = 1e-9


def error_factors(c, c_pinv) -> tuple[np.ndarray, np.ndarray]:
    """``A`` ``(orig, q)`` and ``B`` ``(q, orig)`` with ``A @ B = I - C C^+``, the map from an
    activation to its reconstruction error ``f - f C C^+`` (docs/method.md 1.14); ``q`` is its
    rank, 0 for a basis that reconstructs every activation (singular values up to
    :data:`ERROR_ATOL` count as zero)."""
    c, c_pinv = np.asarray(c, np.float64), np.asarray(c_pinv, np.float64)
    u, s, vt = np.linalg.svd(np.eye(c.shape[0]) - c @ c_pinv)
    q = int(np.sum(s > ERROR_ATOL))
    return u[:, :q] * s[:q], vt[:q]
