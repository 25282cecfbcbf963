"""A given basis from the command line (docs/method.md 1.14): ``compute_basis.py --basis=given
--basis_file=...`` reproduces a LIB and a PCA graph from their own bases, an overcomplete basis
builds and ``ablate.py`` ablates it, and bad basis files end with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from libjax import kinds
from libjax.storage import graph as graph_lib
from tests.helpers.script_runs import run_script

SAMPLES = "--n_samples=256"


def _build(out_dir, *args):
    result = run_script("compute_basis.py", f"--out_dir={out_dir}", SAMPLES, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return graph_lib.load(out_dir)


@pytest.mark.slow
@pytest.mark.parametrize("basis", ["lib", "pca"])
def test_a_graph_passed_back_by_file_reproduces_itself(basis, tmp_path):
    own = _build(tmp_path / basis, f"--basis={basis}")
    kinds.GivenBasis.from_bases(own.bases).save(tmp_path / "dirs.npz")
    given = _build(tmp_path / "given", "--basis=given", f"--basis_file={tmp_path / 'dirs.npz'}")
    assert given.config["basis"] == "given"
    for name, b in own.bases.items():
        assert given.bases[name].kind == "given"
        assert np.array_equal(given.bases[name].C, b.C)
    for pair, e in own.edges.items():
        np.testing.assert_allclose(given.edges[pair], e, rtol=1e-12, atol=1e-12 * e.max())


@pytest.mark.slow
def test_an_overcomplete_basis_builds_and_ablates(tmp_path):
    pca = _build(tmp_path / "pca", "--basis=pca")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "dirs.npz", **{name: rng.normal(size=(160, 40)) @ b.C_pinv[:40]
                                       for name, b in pca.bases.items()})
    graph_dir = tmp_path / "over"
    g = _build(graph_dir, "--basis=given", f"--basis_file={tmp_path / 'dirs.npz'}")
    assert all(b.C.shape == (129, 160) for b in g.bases.values())
    ablated = run_script("ablate.py", f"--graph_dir={graph_dir}", "--n_samples=300",
                         "--node_layers=ln2.0,unembed", "--schedule=explicit",
                         "--specific_points=160,80,0", "--noplot")
    assert ablated.returncode == 0, ablated.stderr[-3000:]
    out = graph_dir / "ablations"
    node = json.loads((out / "over_lib_ablation_results.json").read_text())
    edge = json.loads((out / "over_edge_ablation_results.json").read_text())
    for name in ("ln2.0", "unembed"):
        assert list(node["results"][name]) == ["160", "80", "0"]
        assert node["results"][name]["160"] == node["no_ablation_result"]
        assert 0 < edge["n_edges_required"][name] <= 160 * 160
    pca_on_given = run_script("ablate.py", f"--graph_dir={graph_dir}", "--ablations=node",
                              "--basis=pca", "--noplot")
    assert pca_on_given.returncode == 2 and "no PCA projection" in pca_on_given.stderr


BAD_FILES = {
    "no file": (None, "--basis=given needs --basis_file"),
    "a layer short": ({"ln1.0": (20, 129), "ln2.0": (20, 129)}, "no directions for node layer"),
    "wrong width": ({"ln1.0": (20, 129), "ln2.0": (20, 100), "unembed": (20, 129)},
                    "have width 100"),
}


@pytest.mark.parametrize("what", list(BAD_FILES))
def test_bad_basis_files_end_with_a_clear_error(what, tmp_path):
    shapes, message = BAD_FILES[what]
    args = ["--basis=given"]
    if shapes is not None:
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "dirs.npz", **{k: rng.normal(size=s) for k, s in shapes.items()})
        args.append(f"--basis_file={tmp_path / 'dirs.npz'}")
    result = run_script("compute_basis.py", f"--out_dir={tmp_path / 'out'}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
