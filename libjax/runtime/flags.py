"""Command-line flags derived from a configuration dataclass, so that a new field is a new flag.

:func:`define_dataclass_flags` defines one absl flag per field of a dataclass (such as
:class:`libjax.pipeline.BuildConfig`): its name is the field's (or a given alias), its type
follows the field's annotation (``bool``, ``int``, ``float``, ``str``, ``Optional`` of these, a
tuple of them as a comma-separated list; a field typed ``Any`` takes its default's type), its
default is the field's and its help is the field's entry in the class docstring's
``Attributes:`` section. A field's ``metadata`` may state ``help``, ``choices`` (an enum flag) or
``flag`` (another flag name) where the docstring and annotation cannot. The
:class:`DataclassFlags` it returns reads back the values and which of them the user stated, the
two halves that :func:`libjax.pipeline.config.resolve` combines with a model's defaults.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, Optional

from absl import flags

from libjax.method import integration
from libjax.pipeline import config
from libjax.runtime import precision

_ENTRY = re.compile(r"(\w+(?:\s*,\s*\w+)*)\s*:\s*(.*)")
_ROLE = re.compile(r":\w+:`(~?)([^`]*)`")


def attribute_docs(cls: type) -> dict[str, str]:
    """Each attribute's text in ``cls``'s Google-style ``Attributes:`` section, as one line of
    plain text (``a, b: text`` gives ``a`` and ``b`` the same text)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    section_indent = len(lines[start]) - len(lines[start].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    entry_indent = None
    for line in lines[start + 1:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent <= section_indent:
            break
        match = _ENTRY.fullmatch(line.strip())
        if match and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
            entries.append(([n.strip() for n in match.group(1).split(",")], [match.group(2)]))
        elif entries:
            entries[-1][1].append(line.strip())
    return {name: _plain(" ".join(text)) for names, text in entries for name in names}


def _plain(text: str) -> str:
    """Docstring markup as a terminal shows it, as Sphinx does: a role by its target (its last
    part where marked ``~``), a literal without its quotes."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
                     text)
    return re.sub(r"\s+", " ", text.replace("``", "")).strip()


_SCALARS = (bool, int, float, str)


def _flag_type(annotation: Any, default: Any) -> tuple[type, bool]:
    """The scalar type a field's flag parses, and whether it is a list of them."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:  # Optional[X], X | None
        return _flag_type(args[0], default)
    sequences = (tuple, list, collections.abc.Sequence, collections.abc.Collection)
    if origin in sequences and args and args[0] in _SCALARS:
        return args[0], True
    if annotation in _SCALARS:
        return annotation, False
    if isinstance(default, (tuple, list)):
        return (type(default[0]) if default else str), True
    return (type(default) if isinstance(default, _SCALARS) else str), False


@dataclasses.dataclass(frozen=True)
class DataclassFlags:
    """The flags of a dataclass's fields: ``holders`` maps each field to its flag."""

    cls: type
    holders: Mapping[str, flags.FlagHolder]
    list_types: Mapping[str, type]  # fields whose flag is a list: the element type

    def values(self) -> dict[str, Any]:
        """Every field's flag value (None where a flag without default was not given)."""
        out = {}
        for field, holder in self.holders.items():
            value = holder.value
            if field in self.list_types and value is not None:
                value = tuple(self.list_types[field](v) for v in value)
            out[field] = value
        return out

    def given(self) -> set[str]:
        """The fields whose flag the user stated on the command line."""
        return {field for field, holder in self.holders.items() if holder.present}


def define_dataclass_flags(cls: type, *, names: Optional[Mapping[str, str]] = None,
                           choices: Optional[Mapping[str, Collection[str]]] = None,
                           defaults: Optional[Mapping[str, Any]] = None,
                           help_notes: Optional[Mapping[str, str]] = None,
                           flag_values: flags.FlagValues = flags.FLAGS) -> DataclassFlags:
    """One flag per field of the dataclass ``cls`` (see the module docstring). ``names``: flag
    names of fields whose flag is named otherwise; ``choices``: the allowed values of string
    fields (an enum flag); ``defaults``: flag defaults other than the field's (None: decided
    later, e.g. by the model or the backend); ``help_notes``: text added to a field's help."""
    names, choices = dict(names or {}), dict(choices or {})
    defaults, help_notes = dict(defaults or {}), dict(help_notes or {})
    docs = attribute_docs(cls)
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation names a type its module does not import
        hints = {}
    holders, list_types = {}, {}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        name = meta.get("flag") or names.get(field.name, field.name)
        if field.default is not dataclasses.MISSING:
            field_default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            field_default = field.default_factory()
        else:
            field_default = None
        default = defaults.get(field.name, field_default)
        text = meta.get("help") or docs.get(field.name) or field.name.replace("_", " ")
        text += help_notes.get(field.name, "")
        allowed = meta.get("choices") or choices.get(field.name)
        kind, is_list = _flag_type(hints.get(field.name, Any), field_default)
        common = dict(flag_values=flag_values)
        if allowed is not None:
            holder = flags.DEFINE_enum(name, default, list(allowed), text, **common)
        elif is_list:
            list_types[field.name] = kind
            holder = flags.DEFINE_list(name, None if default is None else
                                       [str(v) for v in default], text, **common)
        elif kind is bool:
            holder = flags.DEFINE_boolean(name, default, text, **common)
        elif kind is int:
            holder = flags.DEFINE_integer(name, default, text, **common)
        elif kind is float:
            holder = flags.DEFINE_float(name, default, text, **common)
        else:
            holder = flags.DEFINE_string(name, None if default is None else str(default), text,
                                         **common)
        holders[field.name] = holder
    return DataclassFlags(cls, holders, list_types)


# How BuildConfig's fields meet the command line, where the field alone does not say.
BUILD_FLAG_NAMES = {"compute_edges": "edges"}
BUILD_CHOICES = {"basis": config.BASES, "integration": integration.RULES,
                 "precision": precision.POLICIES}
# Unset unless given: the model family (batch size, final rotation) or the backend (precision)
# decides; the config's own default applies where neither does.
BUILD_UNSET = ("batch_size", "rotate_final_node_layer", "precision")
_SOURCES_NOTE = " (0: exact; default: the model's, 1 for language models, else exact)"
BUILD_HELP_NOTES = {
    "n_stochastic_sources_basis_pos": _SOURCES_NOTE,
    "n_stochastic_sources_basis_hidden": _SOURCES_NOTE,
    "n_stochastic_sources_edges": _SOURCES_NOTE,
    "batch_size": f" (default: the model's, else {config.BuildConfig.batch_size})",
    "rotate_final_node_layer": " (default: the model's)",
    "precision": " (default: mixed on TPU, else float64)",
    "seed": " Scripts also draw their data samples with it.",
}


def define_build_flags(flag_values: flags.FlagValues = flags.FLAGS) -> DataclassFlags:
    """A flag for every :class:`~libjax.pipeline.BuildConfig` field (``--edges`` for
    ``compute_edges``)."""
    return define_dataclass_flags(config.BuildConfig, names=BUILD_FLAG_NAMES,
                                  choices=BUILD_CHOICES,
                                  defaults={k: None for k in BUILD_UNSET},
                                  help_notes=BUILD_HELP_NOTES, flag_values=flag_values)


def build_config(build_flags: DataclassFlags,
                 model_defaults: Mapping[str, Any]) -> config.BuildConfig:
    """The :class:`~libjax.pipeline.BuildConfig` the command line asks for, over the model's
    defaults (:func:`libjax.pipeline.config.resolve`); precision: the backend's default policy
    unless given."""
    values = build_flags.values()
    values["precision"] = values["precision"] or precision.default_policy()
    return config.resolve(values, build_flags.given(), model_defaults)
