"""The flags the scripts share, defined once: the model family, its weights and data, the build
or output directory. A script names the ones it takes (:func:`define`, with its own default or
help where its meaning differs) and turns them into :class:`models.family.Options` with
:func:`options`; a build's own flags come from :class:`libjax.pipeline.BuildConfig`'s fields
(:func:`libjax.runtime.flags.define_build_flags`). It lives in ``models`` because the model flag
lists the registry's families."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import flags

from libjax.runtime import cli
from models import registry
from models.family import DTYPES, Options, single_block


class Shared(NamedTuple):
    """A shared flag: its absl definer, its usual default and help."""

    define: Callable[..., flags.FlagHolder]
    default: Any
    help: str


def _define_dtype(name, default, help, **kwargs) -> flags.FlagHolder:
    return flags.DEFINE_enum(name, default, list(DTYPES), help, **kwargs)


_FAMILIES = ", ".join(registry.FAMILIES)
_ABLATION_FILE = "*_edge_ablation_results.json"

SHARED = {
    "model": Shared(flags.DEFINE_string, None, "model family (default: the build's): " + _FAMILIES),
    "checkpoint": Shared(flags.DEFINE_string, None, "weights (default: the build's)"),
    "graph_dir": Shared(flags.DEFINE_string, None, "a finished build (compute_basis.py --out_dir)"),
    "node_layers": Shared(flags.DEFINE_string, None,
                          "comma-separated node layers (default: the paper's)"),
    "layer": Shared(flags.DEFINE_string, None,
                    "transformer block whose graph to build (default 0); several, one graph "
                    "each in --out_dir/layer_<block>: a list 0,3,6, a range 4-7 or all"),
    "dataset": Shared(flags.DEFINE_string, None, "dataset name (model-specific; default: model's)"),
    "data_dir": Shared(flags.DEFINE_string, None, "local directory with the dataset's files"),
    "split": Shared(flags.DEFINE_string, None, "data split (modadd: train|test|all)"),
    "n_samples": Shared(flags.DEFINE_integer, None, "samples for the bases and edges"),
    "n_gram_samples": Shared(flags.DEFINE_integer, None,
                             "samples for the means and Grams (default: --n_samples)"),
    "n_ctx": Shared(flags.DEFINE_integer, None, "tokens per sample (language models)"),
    "dtype": Shared(_define_dtype, "float64", "model dtype"),
    "out_dir": Shared(flags.DEFINE_string, None, "output directory"),
    "out": Shared(flags.DEFINE_string, None, "output path"),
    "overwrite": Shared(flags.DEFINE_boolean, False,
                        "replace graphs in --out_dir built with other settings"),
    "rerun": Shared(flags.DEFINE_boolean, False, "recompute ablation records that already exist"),
    "n_eval_samples": Shared(flags.DEFINE_integer, None, "evaluate on the first n samples only"),
    "score_target_difference": Shared(
        flags.DEFINE_float, None, "largest allowed change of the metric for edges required and "
        "directions needed (default: the model's; 0.001, language models 0.05 nats)"),
    "edge_results": Shared(flags.DEFINE_string, None, "an edge-ablation result file ("
                           + _ABLATION_FILE + " of ablate.py)"),
}
_KEEP = object()


def define(name: str, default: Any = _KEEP, help: str | None = None, *,
           integer: bool = False, required: bool = False,
           flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """The shared flag ``name`` with its usual default and help unless given (``integer``: an
    integer flag where the shared one is a string, as a single ``--layer``)."""
    spec = SHARED[name]
    default = spec.default if default is _KEEP else default
    definer = flags.DEFINE_integer if integer else spec.define
    return definer(name, default, help or spec.help, required=required, flag_values=flag_values)


def options(flag_values: flags.FlagValues = flags.FLAGS, **overrides) -> Options:
    """:class:`Options` from every defined flag named as one of its fields (``--node_layers``
    comma-separated, ``--layer`` one block), then ``overrides`` (a field a script's flag means
    otherwise, e.g. an evaluation ``--split``, set to None)."""
    values = {}
    for field in dataclasses.fields(Options):
        if field.name in flag_values:
            values[field.name] = flag_values[field.name].value
    if "node_layers" in values:
        values["node_layers"] = cli.comma_list(values["node_layers"])
    if isinstance(values.get("layer"), str):
        values["layer"] = single_block(values["layer"])
    values.update(overrides)
    return Options(**{k: v for k, v in values.items() if v is not None})
