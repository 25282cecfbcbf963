"""The scripts' shared flags (models.script_flags): every script starts and lists its flags,
compute_basis.py one per BuildConfig field, and the shared flags become Options."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from libjax.pipeline import BuildConfig
from libjax.runtime import flags as config_flags
from models import script_flags
from models.family import Options

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def _help(script: str) -> str:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Try --helpfull" in run.stdout, run.stderr  # absl's --help
    return run.stdout


@pytest.mark.slow  # a few seconds of imports per script; the other scripts' tests run most
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_starts_and_lists_its_shared_flags(script):
    text = _help(script)
    assert "--compilation_cache_dir" in text  # libjax's flags are listed, not only in --helpfull
    source = (ROOT / "scripts" / script).read_text()
    for name in script_flags.SHARED:
        if f'script_flags.define("{name}"' in source:
            assert f"--{name}:" in text or f"--[no]{name}:" in text, name


def test_compute_basis_has_a_flag_for_every_build_config_field():
    text = _help("compute_basis.py")
    for field in dataclasses.fields(BuildConfig):
        name = config_flags.BUILD_FLAG_NAMES.get(field.name, field.name)
        assert f"--{name}:" in text or f"--[no]{name}:" in text, name


def _parsed(argv, **definitions):
    values = flags.FlagValues()
    for name, kwargs in definitions.items():
        script_flags.define(name, flag_values=values, **kwargs)
    values(["prog", *argv])
    return values


def test_shared_flags_become_options():
    values = _parsed(["--node_layers=ln1.0, ln2.0", "--layer=3", "--n_samples=5",
                      "--checkpoint=w.npz", "--dtype=float32", "--split=test"],
                     node_layers={}, layer={}, n_samples={}, checkpoint={}, dtype={}, split={},
                     out_dir={})
    assert script_flags.options(values) == Options(
        checkpoint="w.npz", node_layers=("ln1.0", "ln2.0"), layer=3, n_samples=5,
        dtype="float32", split="test")
    # a flag that means something else in a script is left out; a value is given instead
    assert script_flags.options(values, split=None, checkpoint="v.npz").split is None
    several = _parsed(["--layer=all"], layer={})
    assert script_flags.options(several).layer is None  # several blocks: the script's to split
    single = _parsed(["--layer=15"], layer=dict(default=None, integer=True))
    assert script_flags.options(single).layer == 15


def test_script_defaults_and_help_override_the_shared_ones():
    values = _parsed([], dtype=dict(default="float32", help="evaluation dtype"),
                     graph_dir=dict(required=False))
    assert values["dtype"].value == "float32" and values["dtype"].help.endswith("evaluation dtype")
    assert values["graph_dir"].help == script_flags.SHARED["graph_dir"].help
    with pytest.raises(flags.IllegalFlagValueError):
        _parsed(["--dtype=float16"], dtype={})
