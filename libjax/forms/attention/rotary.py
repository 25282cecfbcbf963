"""Rotary position embeddings inside the attention form (see :mod:`libjax.forms.attention`).

A rotary section's queries and keys are ``q_t = n_t W_Q Theta_t`` and ``k_s = n_s W_K Theta_s``
per head, with ``Theta_t`` orthogonal: on the first ``r`` dims of the head, split in two halves
``(x1, x2)``, ``x Theta_t = x cos_t + (-x2, x1) sin_t`` (GPT-NeoX's half-split convention, which
is also Llama's ``rotate_half`` when ``r = d_head``); the other dims pass through. The form
takes the angle tables ``cos, sin`` ``(P, r)`` from the model (``rotary_angles(P)``), so the
frequencies have one definition. Position ``s``'s rotation enters the key and query paths of
``G_s`` as ``W_K Theta_s`` and ``W_Q Theta_s``: the methods apply ``Theta_s^T`` (the inverse
rotation, ``sin -> -sin``) to their ``d_head``-sized factors at ``s``, elementwise, and keep the
unrotated head weights for everything else.
"""

from __future__ import annotations

import jax.numpy as jnp


def turn(form, x, positions, n_pos: int, axis: int, inverse: bool = False):
    """``x Theta_p`` (or ``x Theta_p^T`` if ``inverse``) on the last axis (``d_head``) of ``x``,
    whose axis ``axis`` runs over ``positions`` (indices into ``0..n_pos-1``, static or traced);
    ``x`` itself without rotary embeddings (``form.rotary_angles`` None)."""
    if form.rotary_angles is None:
        return x
    cos, sin = (jnp.asarray(a, x.dtype)[positions] for a in form.rotary_angles(n_pos))
    r = cos.shape[-1]
    shape = [1] * x.ndim
    shape[axis], shape[-1] = cos.shape[0], r
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    if inverse:
        sin = -sin
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos + turned * sin, rest], axis=-1)
