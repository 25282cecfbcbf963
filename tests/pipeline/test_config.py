"""How a user's options combine with a model's paper defaults (libjax.pipeline.config.resolve)."""

import pytest

from libjax.errors import ConfigError
from libjax.pipeline.config import BuildConfig, resolve

LM_DEFAULTS = {"n_stochastic_sources_basis_pos": 1, "n_stochastic_sources_edges": 1,
               "rotate_final_node_layer": True, "batch_size": 2}


def test_model_defaults_replace_option_defaults_not_stated_values():
    cfg = resolve({"basis": "lib", "batch_size": None, "center": True}, set(), LM_DEFAULTS)
    assert cfg == BuildConfig(n_stochastic_sources_basis_pos=1, n_stochastic_sources_edges=1,
                              rotate_final_node_layer=True, batch_size=2)
    stated = resolve({"batch_size": 8, "rotate_final_node_layer": False},
                     {"batch_size", "rotate_final_node_layer"}, LM_DEFAULTS)
    assert stated.batch_size == 8 and stated.rotate_final_node_layer is False


def test_unset_values_leave_the_build_config_defaults():
    assert resolve({"batch_size": None, "seed": None}, set(), {}) == BuildConfig()


def test_zero_sources_ask_for_exact_sums_and_negative_ones_are_refused():
    cfg = resolve({"n_stochastic_sources_basis_pos": 0, "n_stochastic_sources_edges": 0},
                  {"n_stochastic_sources_basis_pos", "n_stochastic_sources_edges"}, LM_DEFAULTS)
    assert cfg.n_stochastic_sources_basis_pos is None and cfg.n_stochastic_sources_edges is None
    with pytest.raises(ConfigError, match="n_stochastic_sources_edges must be >= 0"):
        resolve({"n_stochastic_sources_edges": -1}, {"n_stochastic_sources_edges"}, {})


def test_basis_sources_of_the_model_apply_to_lib_only():
    pca = resolve({"basis": "pca"}, {"basis"}, LM_DEFAULTS)
    assert pca.n_stochastic_sources_basis_pos is None
    assert pca.n_stochastic_sources_edges == 1  # edge sources belong to every basis


def test_unknown_options_are_refused():
    with pytest.raises(ConfigError, match="unknown build options"):
        resolve({"bases": "lib"}, {"bases"}, {})


def test_a_threshold_that_drops_the_constant_direction_is_refused_before_any_data():
    from tests.helpers.tiny import tiny_transformer
    model, _ = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    with pytest.raises(ConfigError, match="constant direction"):
        BuildConfig(truncation_threshold=1.0).validate(model)
    BuildConfig(truncation_threshold=1.0, center=False).validate(model)  # no constant direction
