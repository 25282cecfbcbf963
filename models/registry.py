"""The model families the command-line tools know, by ``--model`` name.

Each entry names the module that defines the family (its ``FAMILY``); a module is imported only
when its family is asked for, so a modular-addition job never imports the language-model stack.
Adding a model means adding its family module and one line here; the scripts never change.
"""

from __future__ import annotations

import importlib

from libjax.errors import ConfigError
from models.family import Family

FAMILIES: dict[str, str] = {
    "modadd": "models.modadd.family",
    "mlp": "models.mlp.family",
    "gpt2": "models.lm.gpt2",
    "tinystories-1m": "models.lm.gptneo",
    "pythia": "models.lm.pythia",
    "llama": "models.lm.llama",
}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def of_build(build_info: dict, name: str | None) -> Family:
    """The family of a finished build: ``name`` if given, else the one its build.json records."""
    name = name or build_info.get("family")
    if name is None:
        raise ConfigError("this build's build.json does not record its model family (it predates "
                          "that record); pass --model")
    return get(name)
