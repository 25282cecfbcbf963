"""Flags derived from configuration dataclasses: every BuildConfig field is a flag, and a command
line comes back as the BuildConfig it states."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import pytest
from absl import flags

from libjax.pipeline import BuildConfig
from libjax.pipeline.config import resolve
from libjax.runtime import flags as config_flags


def _fresh(define, argv, with_values=False):
    """``define``'s flags in a fresh FlagValues, parsed from ``argv`` (and the FlagValues)."""
    values = flags.FlagValues()
    derived = define(values)
    values(["prog", *argv])
    return (derived, values) if with_values else derived


def _build_flags(argv, with_values=False):
    return _fresh(lambda v: config_flags.define_build_flags(flag_values=v), argv, with_values)


def test_every_build_config_field_has_a_flag_with_its_docstring_help():
    derived, values = _build_flags([], with_values=True)
    docs = config_flags.attribute_docs(BuildConfig)
    for field in dataclasses.fields(BuildConfig):
        holder = derived.holders[field.name]
        assert holder.name == config_flags.BUILD_FLAG_NAMES.get(field.name, field.name)
        assert field.name in docs, f"BuildConfig's docstring does not describe {field.name}"
        assert docs[field.name] in values[holder.name].help


def test_unstated_flags_give_the_build_config_defaults():
    derived = _build_flags([])
    assert derived.given() == set()
    assert config_flags.build_config(derived, {}) == BuildConfig()


def _other_value(field: dataclasses.Field, flag, list_type):
    """A command-line setting of ``field`` (its absl ``flag``) to a value other than its
    default, and that value (``list_type``: the element type of a list flag, else None)."""
    if list_type is not None:
        return f"--{flag.name}=1,2", (list_type(1), list_type(2))
    if isinstance(flag.parser, flags.EnumParser):
        value = next(c for c in flag.parser.enum_values if c != field.default)
        return f"--{flag.name}={value}", value
    if isinstance(flag.parser, flags.BooleanParser):
        return (f"--no{flag.name}" if field.default else f"--{flag.name}"), not field.default
    if isinstance(flag.parser, flags.IntegerParser):
        return f"--{flag.name}=3", 3
    if isinstance(flag.parser, flags.FloatParser):
        return f"--{flag.name}=0.125", 0.125
    return f"--{flag.name}=given_value", "given_value"


def test_each_flag_round_trips_into_the_build_config():
    fields = dataclasses.fields(BuildConfig)
    unset, values = _build_flags([], with_values=True)
    for field in fields:
        arg, value = _other_value(field, values[unset.holders[field.name].name],
                                  unset.list_types.get(field.name))
        derived = _build_flags([arg])
        assert derived.given() == {field.name}, arg
        assert derived.values()[field.name] == value, arg
        cfg = resolve(derived.values(), derived.given(), {})
        assert getattr(cfg, field.name) == value, arg
        # only this field differs from the defaults
        assert {f.name for f in fields
                if getattr(cfg, f.name) != getattr(BuildConfig(), f.name)} <= {field.name}


def test_stated_flags_win_over_model_defaults_and_unstated_ones_do_not():
    model = {"rotate_final_node_layer": True, "batch_size": 2, "n_stochastic_sources_edges": 1}
    cfg = config_flags.build_config(_build_flags([]), model)
    assert (cfg.rotate_final_node_layer, cfg.batch_size, cfg.n_stochastic_sources_edges) == \
        (True, 2, 1)
    cfg = config_flags.build_config(_build_flags(
        ["--norotate_final_node_layer", "--batch_size=8", "--n_stochastic_sources_edges=0"]),
        model)
    assert (cfg.rotate_final_node_layer, cfg.batch_size, cfg.n_stochastic_sources_edges) == \
        (False, 8, None)  # 0 sources: the exact sums


@dataclasses.dataclass(frozen=True)
class _Toy:
    """A configuration a helper might add fields to.

    Attributes:
      rate: step size, see
        :attr:`libjax.pipeline.BuildConfig.seed` and ``code``.
      count, other_count: how many.
      positions: positions to skip.
      name: a name.
      anything: an untyped field with a float default.
    """

    rate: float = 0.5
    count: Optional[int] = None
    other_count: int = 2
    positions: tuple[int, ...] = ()
    name: Optional[str] = None
    anything: Any = 1.5
    undocumented: bool = dataclasses.field(default=False, metadata={"help": "said here",
                                                                    "flag": "documented"})


def test_a_new_field_of_any_simple_type_becomes_a_flag():
    derived = _fresh(lambda v: config_flags.define_dataclass_flags(_Toy, flag_values=v),
                     ["--count=4", "--positions=0,3", "--anything=2.5", "--documented"])
    assert derived.values() == {"rate": 0.5, "count": 4, "other_count": 2, "positions": (0, 3),
                                "name": None, "anything": 2.5, "undocumented": True}
    assert derived.given() == {"count", "positions", "anything", "undocumented"}
    assert _Toy(**derived.values()).positions == (0, 3)
    docs = config_flags.attribute_docs(_Toy)
    assert docs["rate"] == "step size, see libjax.pipeline.BuildConfig.seed and code."
    assert docs["count"] == docs["other_count"] == "how many."
    assert derived.holders["undocumented"].name == "documented"


def test_a_value_of_the_wrong_type_is_refused_by_the_flag_parser():
    with pytest.raises(flags.IllegalFlagValueError):
        _build_flags(["--seed=abc"])
    with pytest.raises(flags.IllegalFlagValueError):
        _build_flags(["--basis=ica"])
