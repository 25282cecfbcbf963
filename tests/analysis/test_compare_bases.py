"""The LIB-against-PCA command end to end on the shipped digits MLP, and the MLP ablations of
``ablate.py`` and ``compare_bases.py`` on MNIST read from ``--data_dir`` (small files in the real
idx format, tests/image_files.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from libjax import pipeline
from models import registry
from models.family import Options
from models.mlp import model as mlp
from tests.helpers.image_files import random_mnist, write_mnist
from tests.helpers.script_runs import run_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_bases_on_the_shipped_digits_mlp(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "cmp"
    result = run_script("compare_bases.py", "--n_samples=200", "--n_eval_samples=100",
                        "--score_target_difference=0.01", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["split"] == "test" and summary["n_samples"] == 100  # digits: held out
    assert summary["n_build_samples"] == 200 and summary["metric"] == "accuracy"
    assert list(summary["layers"]) == ["layers.0", "layers.1", "layers.2", "output"]
    for name in ("layers.0", "layers.1", "layers.2"):
        entry = summary["layers"][name]
        for basis in ("lib", "pca"):
            assert 0 < entry["directions_needed"][basis] <= entry["width"]
            assert 0 < entry["edges_required"][basis] <= entry["possible_edges"]
    node = json.loads((out / "lib_node_ablation_results.json").read_text())
    assert len(node["results"]["layers.1"]) == 52  # digits: every number of directions, 51..0
    table = (out / "table.md").read_text()
    assert "| layers.0 | 65 |" in table and "unablated" in table and table in result.stdout
    for kind in ("node", "edge"):
        assert (out / f"{kind}_ablation.png").read_bytes()[:8] == PNG_MAGIC
        assert (out / f"{kind}_ablation.svg").exists()


def test_mlp_ablation_defaults_follow_the_dataset(tmp_path):
    """digits: the held-out test split, every number of directions; MNIST: the paper's train
    split and exponential schedule (docs/method.md 5)."""
    family = registry.get("mlp")
    digits = family.ablation_defaults(Options())
    assert digits["split"] == "test" and digits["ablate_every_vec_cutoff"] is None
    cfg = mlp.MLPConfig((784, 4, 10))
    path = tmp_path / "mnist.npz"
    mlp.save(path, {k: np.zeros(s) for k, s in mlp.expected_shapes(cfg).items()}, cfg)
    mnist = family.ablation_defaults(Options(checkpoint=str(path)))
    assert mnist == {"split": "train", "metric": "accuracy", "batch_size": 512,
                     "ablate_every_vec_cutoff": 10, "exp_base": 2.0}


def test_compare_bases_of_a_language_model_needs_its_checkpoint_offline(tmp_path):
    """Language models are compared too (tests/ablation/test_lm_ablation.py); without a network
    the hub's GPT-2 is a clear error, not a traceback."""
    result = run_script("compare_bases.py", "--model=gpt2", f"--out_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gpt2" in result.stderr


@pytest.fixture
def mnist_mlp(tmp_path):
    """A random 784-16-16-10 MLP saved as an MNIST checkpoint, MNIST files of 40 training and
    30 test images, and the LIB graph of the MLP on the training images."""
    rng = np.random.default_rng(0)
    cfg = mlp.MLPConfig((784, 16, 16, 10))
    weights = {k: rng.normal(size=s) / np.sqrt(s[0]) for k, s in mlp.expected_shapes(cfg).items()}
    checkpoint = tmp_path / "mnist_mlp.npz"
    mlp.save(checkpoint, weights, cfg, dataset="mnist")
    data_dir = tmp_path / "mnist"
    for split, n in (("train", 40), ("test", 30)):
        write_mnist(data_dir, split, *random_mnist(n, rng))
    x = random_mnist(40, np.random.default_rng(1))[0].astype(np.float32) / 255
    graph_dir = tmp_path / "graph"
    pipeline.build(mlp.sectioned_model(weights, cfg), x, out_dir=graph_dir,
                model_id=str(checkpoint))
    return {"checkpoint": checkpoint, "data_dir": data_dir, "graph_dir": graph_dir}


def test_ablate_reads_mnist_from_data_dir(mnist_mlp, tmp_path):
    out = tmp_path / "ablations"
    result = run_script("ablate.py", "--model=mlp", f"--graph_dir={mnist_mlp['graph_dir']}",
                        f"--data_dir={mnist_mlp['data_dir']}", "--dataset=mnist",
                        f"--out_dir={out}", "--noplot")
    assert result.returncode == 0, result.stderr
    assert "on 40 samples (train split)" in result.stdout  # MNIST: the paper's train split
    node = json.loads((out / "graph_lib_ablation_results.json").read_text())
    assert node["config"]["data_dir"] == str(mnist_mlp["data_dir"])
    assert node["config"]["dataset"] == "mnist" and node["config"]["n_samples"] == 40
    assert node["config"]["schedule"]["ablate_every_vec_cutoff"] == 10  # docs/method.md 5, MNIST
    edge = json.loads((out / "graph_edge_ablation_results.json").read_text())
    assert set(edge["n_edges_required"]) == {"layers.0", "layers.1", "layers.2"}

    held_out = run_script("ablate.py", "--model=mlp", f"--graph_dir={mnist_mlp['graph_dir']}",
                          f"--data_dir={mnist_mlp['data_dir']}", "--split=test",
                          "--ablations=node", f"--out_dir={out}", "--noplot")
    assert held_out.returncode == 0, held_out.stderr
    assert "on 30 samples (test split)" in held_out.stdout

    wrong = run_script("ablate.py", "--model=mlp", f"--graph_dir={mnist_mlp['graph_dir']}",
                       "--dataset=cifar10", f"--data_dir={mnist_mlp['data_dir']}")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "cifar10 images have 3072 pixels" in wrong.stderr


@pytest.mark.slow
def test_compare_bases_reads_mnist_from_data_dir(mnist_mlp, tmp_path):
    out = tmp_path / "cmp"
    result = run_script("compare_bases.py", f"--checkpoint={mnist_mlp['checkpoint']}",
                        f"--data_dir={mnist_mlp['data_dir']}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["split"] == "train" and summary["n_samples"] == 40
    assert summary["layers"]["layers.0"]["width"] == 785
