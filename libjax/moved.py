"""Old module names that still import, with a ``DeprecationWarning``, until libjax 0.3.

Research code written against 0.1 imports ``libjax.graph``, ``libjax.build`` and the like. Each
old name resolves to the module that holds that code now (the same module object, so classes
and functions are identical), and a submodule of a moved package follows its package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MODULES = {
    "libjax.build.pipeline": "libjax.pipeline.run",
    "libjax.build.paths": "libjax.pipeline.computations",
    "libjax.storage.partial": "libjax.storage.midstage",
    "libjax.experiments": "libjax.ablation.experiments",
    "libjax.comparison": "libjax.analysis.comparison",
    "libjax.plots": "libjax.analysis.plots",
    "libjax.reference": "libjax.analysis.reference",
    "libjax.attention_dense": "libjax.forms.attention.dense",
    "libjax.attention_lowrank": "libjax.forms.attention.lowrank",
    "libjax.attention_form": "libjax.forms.attention.plan",
    "libjax.attention_sums": "libjax.forms.attention.sums",
    "libjax.ln_form": "libjax.forms.layernorm",
    "libjax.mlp_form": "libjax.forms.mlp",
    "libjax.integration": "libjax.method.integration",
    "libjax.probes": "libjax.method.probes",
    "libjax.stats": "libjax.method.stats",
    "libjax.jacobian": "libjax.method.vjp",
    "libjax.cli": "libjax.runtime.cli",
    "libjax.memory": "libjax.runtime.memory",
    "libjax.progress": "libjax.runtime.progress",
    "libjax.sharding": "libjax.runtime.sharding",
    "libjax.graph": "libjax.storage.graph",
    "libjax.store": "libjax.storage.store",
}
PACKAGES = {"libjax.build": "libjax.pipeline"}


def new_name(old: str) -> str | None:
    """Where the module once called ``old`` lives now; None if it did not move."""
    if old in MODULES:
        return MODULES[old]
    for old_pkg, new_pkg in PACKAGES.items():
        if old == old_pkg or old.startswith(old_pkg + "."):
            return new_pkg + old[len(old_pkg):]
    return None


class _Alias(importlib.abc.Loader):
    """Puts the moved module itself in ``sys.modules`` under its old name."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} is now {self.new}; the old name goes in libjax 0.3",
                      DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(self.new)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Let the old names import (idempotent). First in line, so that a moved package's
    submodule is not loaded a second time, as a copy, from the package's new directory."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
