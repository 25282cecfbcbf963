"""Importing libjax changes no JAX setting; float64 is asked for, and a build checks for it."""

import subprocess
import sys

import jax
import pytest

from libjax.errors import ConfigError
from libjax.pipeline import BuildConfig, build
from libjax.runtime import precision
from tests.helpers.tiny import tiny_transformer


def test_importing_libjax_and_every_model_family_leaves_jax_as_it_was():
    code = ("import jax, libjax, libjax.pipeline, libjax.ablation, models.registry\n"
            "for name in models.registry.FAMILIES: models.registry.get(name)\n"
            "print(jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "", "JAX_PLATFORMS": "cpu"}, check=True)
    assert out.stdout.split() == ["False", "None"]


def test_a_build_without_float64_says_how_to_ask_for_it():
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    with jax.enable_x64(False):
        with pytest.raises(ConfigError, match="enable_float64"):
            build(model, tokens[:8], BuildConfig())


def test_the_context_manager_restores_the_settings():
    with jax.enable_x64(False), jax.default_matmul_precision("default"):
        with precision.float64():
            assert jax.config.jax_enable_x64
            assert jax.config.jax_default_matmul_precision == "highest"
        assert not jax.config.jax_enable_x64
        assert jax.config.jax_default_matmul_precision == "default"
