"""JAX's persistent compilation cache in the command-line scripts (``--compilation_cache_dir``)."""

import os
import subprocess

import pytest

from libjax.runtime import cli
from libjax.storage import graph
from tests.helpers.script_runs import ROOT, assert_identical_graphs, script_command, snapshot

BUILD = ("compute_basis.py", "--n_samples=40", "--noedges")


def build(tmp_path, out, *args, **env):
    """A small modular-addition build into ``tmp_path/out``; the default cache directory (XDG)
    lies in ``tmp_path/xdg`` and the caller's ``$JAX_COMPILATION_CACHE_DIR`` is not inherited."""
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    environ.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **env)
    result = subprocess.run(script_command(*BUILD, f"--out_dir={tmp_path / out}", *args), cwd=ROOT,
                            env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr, result.stderr
    return result


def test_a_repeated_run_loads_every_step_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    build(tmp_path, "first", f"--compilation_cache_dir={cache}")
    entries = snapshot(cache)
    assert entries
    # The user's $JAX_COMPILATION_CACHE_DIR is the default; every step is found there (nothing
    # new is written) and the graph is the same, bit for bit.
    build(tmp_path, "second", JAX_COMPILATION_CACHE_DIR=str(cache))
    assert snapshot(cache) == entries
    assert not (tmp_path / "xdg").exists()
    assert_identical_graphs(graph.load(tmp_path / "first"), graph.load(tmp_path / "second"))


@pytest.mark.slow
def test_an_empty_directory_turns_the_cache_off(tmp_path):
    env_cache = tmp_path / "env"
    build(tmp_path, "out", "--compilation_cache_dir=", JAX_COMPILATION_CACHE_DIR=str(env_cache))
    assert not env_cache.exists() and not (tmp_path / "xdg").exists()


@pytest.mark.slow
def test_an_unwritable_directory_warns_and_builds_without_the_cache(tmp_path):
    (tmp_path / "file").write_text("not a directory")  # unwritable even for root
    result = build(tmp_path, "out", f"--compilation_cache_dir={tmp_path / 'file' / 'xla'}")
    assert "compilation cache off: cannot write to" in result.stderr
    assert graph.load(tmp_path / "out").bases["ln1.0"].kind == "lib"


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.default_cache_dir() == str(tmp_path / "libjax" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.default_cache_dir() == str(tmp_path / "home" / ".cache" / "libjax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    assert cli.default_cache_dir() == ""
