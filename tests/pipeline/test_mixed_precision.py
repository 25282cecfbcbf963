"""The mixed precision policy: 32-bit steps (nothing 64-bit enters or is computed in one, matmuls
at HIGHEST), float64 host sums, agreement with the float64 build, x64 off, and resume rules."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.basis import lib_basis, pca_basis
from libjax.errors import ConfigError, StoreError
from libjax.method.probes import ProbeSet
from libjax.pipeline import BuildConfig, build
from libjax.pipeline.steps import batch_key, batch_key_data
from models.common import transformer
from models.modadd import model as modadd
from tests.helpers.tiny import tiny_ln_transformer, tiny_transformer

MIXED = BuildConfig(precision="mixed")


class LoweredSteps:
    """While active, every step that :mod:`libjax.pipeline.steps` jits is lowered at each call and
    its StableHLO kept (the text includes everything the step calls)."""

    def __init__(self):
        self.texts = []

    def __enter__(self):
        self._jit = jax.jit

        def jit(fun, *args, **kwargs):
            jitted = self._jit(fun, *args, **kwargs)
            if fun.__module__ != "libjax.pipeline.steps":
                return jitted

            def call(*a):
                self.texts.append(jitted.lower(*a).as_text())
                return jitted(*a)
            return call
        jax.jit = jit
        return self

    def __exit__(self, *exc):
        jax.jit = self._jit


def wide_arrays(text: str) -> set[str]:
    """The 64-bit array types in a StableHLO text: every argument and result of the step, and
    every array inside it (Python scalars stay weakly typed scalars under x64 and are left out)."""
    main = re.search(r"func\.func public @main\((.*?)\) -> (.*?) \{", text).group(0)
    wide = r"tensor<(?:[0-9]+x)*(?:f64|i64|ui64)>"
    return set(re.findall(wide, main)) | set(re.findall(r"tensor<(?:[0-9]+x)+(?:f64|i64|ui64)>",
                                                          text))


def _assert_close_to(mixed, reference):
    """Leading Lambdas (above 1e-2 of the largest) within 1e-4, edge sums within 1e-4, Grams
    within 1e-5 of the float64 build."""
    for name, b in mixed.bases.items():
        ref = reference.bases[name]
        if b.Lambda is not None:  # sorted: an isolated variance keeps its place, not its rank
            mine, ref_lambda = np.sort(b.Lambda)[::-1], np.sort(ref.Lambda)[::-1]
            n = int(np.sum(ref_lambda > 1e-2 * ref_lambda[0]))
            np.testing.assert_allclose(mine[:n], ref_lambda[:n], rtol=1e-4)
    for pair, e in mixed.edges.items():
        assert abs(e.sum() / reference.edges[pair].sum() - 1) < 1e-4, pair
    for name in mixed.grams:
        ref = reference.grams[name]
        assert np.abs(mixed.grams[name] - ref).max() < 1e-5 * np.abs(ref).max(), name


def _check_steps(texts, n_layers):
    assert len(texts) >= n_layers  # statistics, M' and edges
    for text in texts:
        assert not wide_arrays(text), wide_arrays(text)
        dots = re.findall(r"stablehlo\.(?:dot_general|dot)\b[^\n]*", text)
        assert all("HIGHEST" in d for d in dots), [d for d in dots if "HIGHEST" not in d][:1]


def test_a_key_draws_the_same_signs_with_x64_on_and_off():
    """Stochastic sources of a mixed build (traced with x64 off) are those of the float64 build
    of the same seed, so the two estimate the same sum."""
    probes = ProbeSet(n_pos=7, dim=5, pos_sources=3, hidden_sources=2)
    key = batch_key(batch_key_data(0, "M' attn_in.0", 3))
    wide = np.asarray(probes.draw_signs(key, 4, jnp.float64))
    with jax.enable_x64(False):
        narrow = np.asarray(jax.jit(lambda k: probes.draw_signs(k, 4, jnp.float32))(key))
    assert narrow.dtype == np.float32 and set(np.unique(wide)) == {-1.0, 1.0}
    np.testing.assert_array_equal(narrow, wide)


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 3, 2**40 + 1])
def test_a_batch_key_derived_in_a_step_is_the_eager_fold_in(seed):
    """A step derives its batch's key from host integers; the key (so every stochastic estimate)
    is the one earlier versions derived eagerly: fold_in(fold_in(key(seed), digest), batch)."""
    stage, batch = "edges ln1.0->ln2.0", 5
    digest = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    eager = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), digest), batch)
    in_step = jax.jit(batch_key)(batch_key_data(seed, stage, batch))
    np.testing.assert_array_equal(jax.random.key_data(in_step), jax.random.key_data(eager))


def test_mixed_steps_are_32_bit_at_highest_precision_and_agree_with_float64():
    assert jax.config.jax_enable_x64  # the tests' setting, under which a float64 would show
    layers = ("ln1.0", "ln2.0", "unembed", "output")  # attention and MLP forms
    model, tokens = tiny_transformer(layers)
    with LoweredSteps() as float64_steps:
        reference = build(model, tokens, BuildConfig())
    assert all(any("f64" in w for w in wide_arrays(t)) for t in float64_steps.texts)  # it can see
    with LoweredSteps() as steps:
        mixed = build(model, tokens, MIXED)
    _check_steps(steps.texts, len(layers))
    _assert_close_to(mixed, reference)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [
    MIXED,
    dataclasses.replace(MIXED, fast_paths=False, n_stochastic_sources_basis_pos=2,
                        n_stochastic_sources_edges=2),
], ids=["LayerNorm forms", "general path, stochastic sources"])
def test_every_path_of_a_mixed_build_is_32_bit_and_agrees(cfg):
    layers = ("ln1.0", "ln1_out.0", "attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0", "mlp_out.0")
    model, tokens = tiny_ln_transformer(layers)
    reference = build(model, tokens, dataclasses.replace(cfg, precision="float64"))
    with LoweredSteps() as steps:
        mixed = build(model, tokens, cfg)
    _check_steps(steps.texts, len(layers))
    _assert_close_to(mixed, reference)


def test_a_mixed_build_runs_with_x64_off_and_builds_resume_only_in_their_precision(tmp_path):
    model, tokens = tiny_transformer(("ln2.0", "unembed", "output"))
    reference = build(model, tokens, BuildConfig(), out_dir=tmp_path / "float64")
    with jax.enable_x64(False):
        mixed = build(model, tokens, MIXED, out_dir=tmp_path / "mixed")
        with pytest.raises(StoreError, match="differs in: config"):
            build(model, tokens, MIXED, out_dir=tmp_path / "float64")
    _assert_close_to(mixed, reference)
    with pytest.raises(StoreError, match="differs in: config"):
        build(model, tokens, BuildConfig(), out_dir=tmp_path / "mixed")


def test_the_float64_policy_refuses_x64_off_and_names_the_mixed_policy():
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    with jax.enable_x64(False):
        with pytest.raises(ConfigError, match="precision='mixed'"):
            build(model, tokens[:8], BuildConfig())


@pytest.mark.parametrize("field,value,message", [
    ("precision", "float16", "unknown precision policy 'float16'"),
    ("relative_truncation_threshold", 1.5, r"in \[0, 1\)"),
    ("relative_truncation_threshold", -1e-6, r"in \[0, 1\)"),
])
def test_bad_precision_options_are_refused(field, value, message):
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    with pytest.raises(ConfigError, match=message):
        build(model, tokens, BuildConfig(**{field: value}))


def test_the_relative_threshold_defaults_per_policy():
    assert BuildConfig().relative_threshold == 0.0
    assert BuildConfig(precision="mixed").relative_threshold == 1e-6
    assert BuildConfig(precision="mixed", relative_truncation_threshold=0).relative_threshold == 0


def test_the_relative_threshold_drops_small_free_directions_but_never_the_constant():
    variances = np.array([4e8, 1e3, 1e2, 1e-3, 1e-9])  # the constant's 1 is far below 1e-6 x 4e8
    gram = np.diag(np.append(variances, 1.0))
    mean = np.append(np.zeros(5), 1.0)
    assert pca_basis(gram, mean, threshold=1e-15).dim == 6
    kept = pca_basis(gram, mean, threshold=1e-15, relative=1e-6)
    np.testing.assert_array_equal(kept.gram_eigenvalues, [1.0, 4e8, 1e3])
    # Lambdas: with M' = diag(m) in these coordinates, Lambda_j = D_j m_j
    d, lam = np.array([4.0, 3.0, 2.0, 1.0, 0.5]), np.array([1.0, 0.5, 1e-2, 1e-3, 1e-5])
    gram, m_prime = np.diag(np.append(d, 1.0)), np.diag(np.append(lam / d, 1e-9))
    lib = lib_basis(gram, mean, m_prime, threshold=1e-15, relative=1e-3)
    np.testing.assert_allclose(lib.Lambda, [1e-9, 1.0, 0.5, 1e-2, 1e-3])  # constant first


def _transformer_with_a_small_direction(scale=1e-4):
    """The tiny transformer with residual coordinate 0 scaled down by ``scale`` wherever it is
    written (embeddings, attention and MLP outputs): a direction of every node layer whose
    variance is ~``scale**2`` of the largest, below the mixed policy's relative threshold."""
    cfg = transformer.TransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11, n_ctx=3,
        act_fn="relu", normalization=None, last_pos_module="add_resid1.0")
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(size=s) / np.sqrt(s[-2] if len(s) > 1 else 4)
               for k, s in modadd.expected_shapes(cfg).items()}
    for name in ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_O", "blocks.0.attn.b_O",
                 "blocks.0.mlp.W_out", "blocks.0.mlp.b_out"):
        weights[name][..., 0] *= scale
    model = transformer.sectioned_model("tiny", cfg, transformer.fold_biases(cfg, weights),
                                        ("ln1.0", "ln2.0", "unembed", "output"))
    return model, rng.integers(0, 11, size=(64, 3)).astype(np.int32)


def test_the_policy_truncates_lib_bases_relatively_but_pca_bases_only_where_asked():
    """A PCA basis never divides by a Gram eigenvalue, so float32 round-off among its smallest
    directions is harmless and the mixed policy keeps what float64 keeps (dropping them changed
    the edges the modular-addition PCA graphs need by up to 18%); LIB bases, which divide by
    them, are still truncated at the policy's relative threshold, and a threshold the user gives
    applies to both."""
    model, tokens = _transformer_with_a_small_direction()
    pca = dataclasses.replace(MIXED, basis="pca")
    reference = build(model, tokens, dataclasses.replace(pca, precision="float64"))
    mixed = build(model, tokens, pca)
    assert {n: b.dim for n, b in mixed.bases.items()} == \
        {n: b.dim for n, b in reference.bases.items()}
    for pair, e in mixed.edges.items():
        assert abs(e.sum() / reference.edges[pair].sum() - 1) < 1e-4, pair
    asked = build(model, tokens, dataclasses.replace(pca, relative_truncation_threshold=1e-6))
    assert all(asked.bases[n].dim < b.dim for n, b in reference.bases.items())
    lib, lib_reference = build(model, tokens, MIXED), build(model, tokens, BuildConfig())
    assert any(lib.bases[n].dim < b.dim for n, b in lib_reference.bases.items())
