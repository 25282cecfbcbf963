"""LIB against PCA on the shipped digits MLP (libjax.analysis.comparison,
libjax.ablation.experiments): the ablations score the MLP's ``(1, classes)`` outputs correctly, a
comparison builds, ablates, summarises and plots both bases, and a rerun reuses exactly the records
whose settings match."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation import experiments
from libjax.analysis import comparison
from models.common import images
from models.mlp import model as mlp

pytest.importorskip("sklearn")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    """The shipped MLP (float64 for builds, float32 for ablations) and a slice of each split."""
    cfg, weights, meta = mlp.load()
    x_train, _ = images.load("digits", "train")
    x_test, y_test = images.load("digits", "test")
    return {"model": mlp.sectioned_model(weights, cfg),
            "model32": mlp.sectioned_model(weights, cfg, dtype=np.float32), "meta": meta,
            "train": x_train[:200], "test": (x_test, y_test)}


def _evaluator(digits, n=None):
    x, y = digits["test"]
    return ablation.Evaluator(digits["model32"], x[:n], y[:n], "accuracy", 512, np.float32)


def test_ablations_score_the_mlp_outputs(digits):
    """Each sample's logits are ``(1, 10)``; the unablated accuracy is the checkpoint's recorded
    test accuracy, ablating every direction leaves a constant guess, keeping every edge changes
    nothing."""
    ev = _evaluator(digits)
    assert digits["model32"].forward(ev.params, digits["test"][0][0]).shape == (1, 10)
    assert ev.base() == pytest.approx(digits["meta"]["test_accuracy"], abs=1e-12)
    graph = pipeline.build(digits["model"], digits["train"], pipeline.BuildConfig(basis="pca"))
    scores = ablation.node_ablation(ev, graph, ["layers.1"], ablation.Schedule(
        "explicit", specific_points=(graph.orig_dims["layers.1"], 0)))["layers.1"]
    counts = np.bincount(digits["test"][1], minlength=10) / len(digits["test"][1])
    assert scores[0] in counts and scores[51] == ev.base()
    forward = ablation.EdgeForward(ev, 1, graph.bases["layers.1"].C,
                                   graph.bases["layers.1"].C_pinv,
                                   (graph.bases["layers.2"].C, graph.bases["layers.2"].C_pinv))
    assert forward.score(np.ones(forward.shape, bool)) == pytest.approx(ev.base())


def test_directions_needed_reads_the_curve_from_the_top():
    good = ablation.is_good("accuracy", 0.9, 0.01)
    curve = {"6": 0.9, "5": 0.895, "4": 0.85, "3": 0.9, "0": 0.1}  # 3 is good again: ignored
    assert comparison.directions_needed(curve, good) == 5
    assert comparison.directions_needed({"6": 0.5}, good) is None
    loss = ablation.is_good("ce_loss", 1.0, 0.1)
    assert comparison.directions_needed({"4": 1.0, "2": 1.05, "1": 1.5}, loss) == 2


def test_experiment_records_say_how_they_were_made(digits):
    ev = _evaluator(digits, 60)
    graph = pipeline.build(digits["model"], digits["train"], pipeline.BuildConfig(basis="pca"))
    schedule = ablation.Schedule("exponential", 3, 2.0)
    node = ablation.node_experiment(ev, graph, ["layers.2"], schedule, "lib", {"split": "x"})
    assert node["config"] == experiments.node_config({"split": "x"}, ["layers.2"], schedule, "lib")
    assert node["config"]["node_layers"] == ["layers.2"] and node["time_taken_s"] > 0
    pairs = [("layers.2", "output")]
    edge = ablation.edge_experiment(ev, graph, pairs, ablation.Bisect(), {"split": "x"})
    assert edge["config"]["pairs"] == ["layers.2->output"]
    assert edge["config"]["schedule"]["schedule_type"] == "bisect"
    assert 0 < edge["n_edges_required"]["layers.2"] <= 43 * 10


def test_compare_builds_ablates_summarises_and_reuses(digits, tmp_path, monkeypatch):
    ev = _evaluator(digits, 120)
    plan = comparison.Plan(pipeline.BuildConfig(), ablation.Schedule("exponential", 5, 2.0),
                           ablation.Bisect(0.01))
    run = lambda plan: comparison.compare(  # noqa: E731
        digits["model"], digits["train"], ev, plan, tmp_path, prefix="d_",
        common={"split": "test"}, model_id="shipped")
    outcomes = run(plan)
    assert set(outcomes) == {"lib", "pca"}
    for basis, o in outcomes.items():
        assert (tmp_path / f"d_{basis}" / "summary.json").exists()
        saved = json.loads((tmp_path / f"d_{basis}_edge_ablation_results.json").read_text())
        assert saved == json.loads(json.dumps(o.edge))
        assert o.node["config"]["label"] == comparison.BASES[basis]
        assert set(o.node["results"]) == {"layers.0", "layers.1", "layers.2"}
        assert o.node["no_ablation_result"] == ev.base()

    summary = comparison.summarize(outcomes, 0.01)
    layer0 = summary["layers"]["layers.0"]
    assert layer0["width"] == 65 and layer0["next"] == "layers.1"
    assert layer0["possible_edges"] == 65 * 51
    assert layer0["directions_kept"]["lib"] == outcomes["lib"].graph.dim("layers.0")
    assert layer0["edges_required"]["pca"] == outcomes["pca"].edge["n_edges_required"]["layers.0"]
    assert summary["layers"]["output"]["directions_kept"] == {"lib": None, "pca": None}
    table = comparison.layer_table(summary)
    assert table[0].startswith("| node layer | width | directions kept (LIB / PCA)")
    assert table[2].startswith(f"| layers.0 | 65 | {layer0['directions_kept']['lib']} / "
                               f"{layer0['directions_kept']['pca']} |")
    assert any(line.startswith("| output | 10 | – / – |") for line in table)

    paths = comparison.plot(outcomes, tmp_path, prefix="d_", title="digits")
    assert [p.name for p in paths] == ["d_node_ablation.png", "d_node_ablation.svg",
                                       "d_edge_ablation.png", "d_edge_ablation.svg"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC

    # The same comparison again reads every record back; another Delta redoes only the edges.
    def refuse(*args, **kwargs):
        raise AssertionError("a matching record was recomputed")
    monkeypatch.setattr(experiments, "node_experiment", refuse)
    monkeypatch.setattr(experiments, "edge_experiment", refuse)
    again = run(plan)
    assert all(again[b].node == json.loads(json.dumps(outcomes[b].node)) for b in again)
    monkeypatch.undo()
    other = run(dataclasses.replace(plan, bisect=ablation.Bisect(0.05)))
    assert other["lib"].edge["config"]["schedule"]["score_target_difference"] == 0.05
    assert other["lib"].node["time_taken_s"] == outcomes["lib"].node["time_taken_s"]
