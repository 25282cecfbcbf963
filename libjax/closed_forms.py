"""Exact closed forms of ``M'`` and the edges for sections whose shape the model declares.

A model may declare a section's form (``form.kind``: ``"mlp"``, ``"ln_in"``, ``"ln_out"``; see
:mod:`models.sectioned`). Its ``M'`` then comes from a few sums over tokens (:func:`moments`,
accumulated over the data) combined once with the next layer's ``K = C C^T`` (:func:`m_prime`),
and its edges from per-batch token sums (:func:`edges`): no VJP per output direction. The edges
are exact, except that an MLP section asked for stochastic edge sources gets the reference's
estimate with the general path's signs (its exact edges cost ``P_out`` times as much; a LayerNorm
section's are cheap and stay exact). The math is in :mod:`libjax.mlp_form` and
:mod:`libjax.ln_form`; this module only dispatches.
"""

from __future__ import annotations

import numpy as np

from libjax import ln_form, memory, mlp_form


def needs_data(form) -> bool:
    """Whether ``M'`` depends on the data (a linear section's does not)."""
    return not (form.kind == "mlp" and form.act is None)


def zero_moments(form, params, width: int):
    """The empty accumulator for a section whose input has ``width`` coordinates."""
    if form.kind == "mlp":
        return mlp_form.DerivativeMoments.zeros(form.weights(params)["B"].shape[1])
    if form.kind == "ln_in":
        return ln_form.LNInMoments.zeros(width)
    return ln_form.LNOutMoments.zeros(width - 1)


def moments(form, params, xs, sample_weights, alphas, weights):
    """One batch's token sums; ``xs`` ``(batch, pos, d_in)`` in the neuron basis."""
    if form.kind == "mlp":
        return mlp_form.derivative_moments(form.act, form.weights(params)["B"], xs,
                                           sample_weights, alphas, weights)
    if form.kind == "ln_in":
        return ln_form.ln_in_moments(xs, sample_weights, alphas, weights, form.centre)
    return ln_form.ln_out_moments(xs, sample_weights, alphas, weights, form.eps, form.centre)


def m_prime(form, params, sums, rows: float, k):
    """Unnormalised ``M'`` from the data sums (None when not :func:`needs_data`) and ``rows``
    (samples x positions); ``k = C C^T`` of the next layer."""
    if form.kind == "mlp":
        weights = {key: None if v is None else np.asarray(v, np.float64)
                   for key, v in form.weights(params).items()}
        if sums is None:
            sums = mlp_form.DerivativeMoments(np.float64(rows), None, None)
        return mlp_form.m_prime(weights, sums, k)
    if form.kind == "ln_in":
        return ln_form.ln_in_m_prime(sums, k)
    return ln_form.ln_out_m_prime(sums, k, form.keep_resid, form.centre)


def takes_edge_sources(form) -> bool:
    """Whether the form computes the stochastic edge estimate when sources are asked for (MLP
    forms, whose exact edges cost ``P_out`` times as much) rather than its exact edges."""
    return form.kind == "mlp"


def edge_chunk(form, params, r_in: int, r_out: int, n_pos: int, d_in: int, sources,
               budget_gb: float) -> int:
    """Rows per step of :func:`edges` within ``budget_gb``: tokens for exact MLP edges (whose
    per-token ``(r_in, m)`` products are also kept cache-sized), samples for the stochastic
    estimate with ``sources`` (LayerNorm forms do not chunk)."""
    m = form.weights(params)["B"].shape[1] if form.kind == "mlp" and form.act else 0
    if sources is None:
        return memory.rows_per_step(8 * 3 * r_in * (m + r_out), budget_gb,
                                    cached_bytes_per_row=8 * r_in * max(m, r_out))
    per_row = 8 * (sources * r_in * (n_pos + 2 * m + 3 * r_out) + n_pos * (3 * m + d_in))
    return memory.rows_per_step(per_row, budget_gb)


def edges(form, params, x_hat, sample_weights, c_in_pinv, c_out, alphas, weights, chunk: int,
          rho=None):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch (``x_hat`` in the input basis):
    exact, or with position weightings ``rho`` ``(batch, R, pos)`` the stochastic estimate (forms
    that :func:`takes_edge_sources` only)."""
    if form.kind == "mlp":
        args = (form.act, form.weights(params), x_hat, sample_weights)
        if rho is not None:
            return mlp_form.stochastic_squared_edges_sum(*args, rho, c_in_pinv, c_out, alphas,
                                                         weights, chunk)
        return mlp_form.squared_edges_sum(*args, c_in_pinv, c_out, alphas, weights, chunk)
    if form.kind == "ln_in":
        return ln_form.ln_in_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights,
                                   form.centre)
    return ln_form.ln_out_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights,
                                form.eps, form.keep_resid, form.centre)
