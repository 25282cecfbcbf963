"""The graph explorer (libjax.analysis.explorer, scripts/explore.py, scripts/cluster.py): the
page's data in Python, then the page itself in headless Chromium from file://: the nodes and
edges it draws, its controls against the same filter computed in Python, its cards, no console
errors; the notebook object; the scripts end to end on the shipped digits MLP."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest

import libjax
from tests.helpers import synthetic_graphs
from libjax import build
from libjax.storage import graph as graph_io
from libjax.analysis import clustering, explorer
from models import registry
from models.family import Options
from models.opened import open_build
from tests.helpers.script_runs import ROOT, run_script, script_command

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SMALL = {"a": 6, "b": 10, "c": 12}
TRICKY = "</script><!-- <b>&amp;"  # a label that must reach the page as text


def small_graph(center=True):
    return synthetic_graphs.graph(SMALL, SMALL, seed=1, center=center)


# --- the page's data, in Python -----------------------------------------------------------------

def test_arrays_survive_the_page_encoding():
    rng = np.random.default_rng(0)
    for array in (rng.normal(size=(3, 4)).astype(np.float32), np.arange(7, dtype=np.uint16),
                  rng.integers(-5, 5, size=(2, 2, 2)).astype(np.int32),
                  np.array([0, 255], np.uint8)):
        back = explorer.decode(json.loads(json.dumps(explorer.encode(array))))
        np.testing.assert_array_equal(back, array)
        assert back.dtype == array.dtype


def test_filter_on_a_hand_made_graph():
    E = np.array([[4.0, 3.0], [2.0, 1.0]])  # out x in; no constant direction (not centred)
    g = synthetic_graphs.graph({"a": 2, "b": 2}, {"a": 2, "b": 2}, center=False,
                               edges={("a", "b"): E})
    data = explorer.page_data(g)
    assert explorer.visible_edge_counts(data, 0.5) == [2]  # 4 + 3 >= 5
    assert explorer.visible_edge_counts(data, 0.98) == [4]
    assert explorer.visible_edge_counts(data, 0.3) == [1]
    # top-1 per node: 4 (first of in 0 and out 0), 3 (first of in 1), 2 (first of out 1); not 1
    assert explorer.visible_edge_counts(data, 1.0, top_k=1) == [3]


def test_python_pruning_keeps_what_every_control_setting_can_show():
    g = small_graph()
    data = explorer.page_data(g, max_share=0.9)
    for t, (pair, E) in zip(data["transitions"], g.edges.items()):
        written = set(zip(explorer.decode(t["dst"]).tolist(), explorer.decode(t["src"]).tolist()))
        assert t["total"] == pytest.approx(E.sum(), rel=1e-15)
        assert t["total_plain"] == pytest.approx(E[1:, 1:].sum(), rel=1e-15)
        for plain in (False, True):
            sub = E.copy()
            if plain:
                sub[0, :] = sub[:, 0] = 0
            flat = np.argsort(-sub, axis=None, kind="stable")
            n = graph_io.edge_mass_count(sub, 0.9)
            assert {tuple(map(int, np.unravel_index(f, E.shape))) for f in flat[:n]} <= written
        weights = explorer.decode(t["w"])
        assert (np.diff(weights.astype(np.float64)) <= 0).all()  # strongest first
    for t in data["transitions"]:
        assert t["written_share"] >= 0.9 and t["written_share_plain"] >= 0.9
    capped = explorer.page_data(g, max_edges=5)
    for t, E in zip(capped["transitions"], g.edges.values()):
        assert len(explorer.decode(t["w"])) == 5
        assert t["written_share"] == pytest.approx(np.sort(E, axis=None)[-5:].sum() / E.sum())
    counts = [explorer.visible_edge_counts(data, s) for s in (0.3, 0.6, 0.9)]
    assert counts[0] <= counts[1] <= counts[2] and counts[0] != counts[2]


def test_node_sizes_are_lambda_or_the_variance():
    lib = small_graph()
    np.testing.assert_array_equal(explorer.node_sizes(lib, "a"), lib.basis("a").Lambda)
    pca = synthetic_graphs.graph(SMALL, SMALL, kind="pca")
    C, G = pca.basis("b").C, pca.grams["b"]
    np.testing.assert_allclose(explorer.node_sizes(pca, "b"), np.diag(C.T @ G @ C), rtol=1e-12)
    neurons = synthetic_graphs.graph(SMALL, {"a": 6, "b": 10})
    np.testing.assert_allclose(explorer.node_sizes(neurons, "c"), np.diag(neurons.grams["c"]))


# --- the page in Chromium -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the page is untested")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def open_page(browser, path):
    """The page at ``path`` from file://, ready; returns it and its console's complaints."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page, problems


def drawn(page):
    return page.locator("[data-node]").count(), page.locator("[data-edge]").count()


def grid_cards(g):
    rng = np.random.default_rng(5)
    return {name: {"kind": "grid", "grid": rng.integers(0, 256, (g.dim(name), 7, 7), np.uint8),
                   "scale": rng.uniform(1, 2, g.dim(name)), "position": np.zeros(g.dim(name), int),
                   "summary": np.asarray([f"summary {j}" for j in range(g.dim(name))]),
                   "axes": np.asarray(["a", "b"]),
                   "label": np.asarray([TRICKY if (name, j) == ("c", 0) else f"{name} feature {j}"
                                        for j in range(g.dim(name))])}
            for name in g.node_layers}


def test_page_draws_what_python_computes(browser, tmp_path):
    g = small_graph()
    found = clustering.cluster(g, include_output=True)
    page_object = explorer.explore(g, cards=grid_cards(g), clustering=found, title="small")
    path = page_object.save(tmp_path / "index.html")
    data = page_object.data
    page, problems = open_page(browser, path)
    assert drawn(page) == (sum(SMALL.values()), sum(explorer.visible_edge_counts(data)))
    assert page.locator('[data-node="b/3"]').count() == 1
    for share, top_k, const in ((0.6, 0, False), (0.6, 2, False), (0.95, 1, False),
                                (0.95, 1, True), (0.3, 0, True)):
        page.fill("#share", str(share))
        page.fill("#topk", str(top_k))
        page.locator("#const").set_checked(const)
        want = sum(explorer.visible_edge_counts(data, share, top_k, const))
        assert drawn(page)[1] == want, (share, top_k, const)
    # hover, click, card, search
    node = page.locator('[data-node="b/3"]')
    node.hover()
    assert "strongest in" in page.locator("#tip").inner_text()
    node.click()
    card = page.locator("#card")
    assert card.get_attribute("data-card") == "b/3"
    assert "b feature 3" in card.inner_text() and "summary 3" in card.inner_text()
    assert card.locator("canvas.heat").count() == 1
    assert page.locator("circle.pinned").count() == 1
    page.fill("#search", "feature 1")
    want = sum("feature 1" in text for L in data["layers"] for text in L["labels"])
    assert page.locator("circle.match").count() == want == 5  # a/1, b/1, c/1, c/10, c/11
    page.locator('[data-node="c/0"]').click()
    assert TRICKY in card.inner_text()
    page.mouse.wheel(0, -300)  # zoom does not break anything
    assert problems == []


def test_page_of_a_graph_without_edges(browser, tmp_path):
    g = synthetic_graphs.graph({"a": 3, "b": 4}, {"a": 3, "b": 4}, edges={})  # --noedges build
    page, problems = open_page(browser, explorer.explore(g).save(tmp_path / "p.html"))
    assert drawn(page) == (7, 0) and problems == []


def test_notebook_object_renders_the_page_inline(browser):
    g = small_graph()
    html = explorer.explore(g)._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "<script>" not in html  # escaped inside
    page = browser.new_page()
    page.set_content(html)
    frame = page.frames[1]
    frame.wait_for_selector("body[data-ready=true]", timeout=30_000)
    assert frame.locator("[data-node]").count() == sum(SMALL.values())


# --- the scripts on the shipped digits MLP --------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_build(tmp_path_factory):
    """The shipped digits MLP's LIB graph, built in this process (as compute_basis.py would)."""
    family, opts = registry.get("mlp"), Options()
    model = family.load(opts, family.node_layers(opts))
    data = family.data(opts)
    out = tmp_path_factory.mktemp("mlp") / "build"
    build.build(model, data.inputs, build.BuildConfig(), gram_inputs=data.gram_inputs,
                out_dir=out, model_id=family.model_id(opts))
    return out


def test_open_build_gives_back_the_models_and_data_of_the_build(mlp_build, caplog):
    opened = open_build(mlp_build)
    assert opened.family.name == "mlp" and opened.model.node_layers == opened.graph.node_layers
    assert opened.opts.n_samples == opened.info["n_samples"] == len(opened.data.inputs)
    assert opened.model is opened.model and opened.data is opened.data  # made once
    assert "differs" not in caplog.text
    fewer = open_build(mlp_build, n_samples=100)
    assert len(fewer.data.inputs) == 100 and "differs from the data it was built on" in caplog.text


def test_explore_script_writes_serves_and_shows_image_cards(mlp_build, browser):
    before = {p.name: p.stat().st_mtime_ns for p in (mlp_build / "stages").iterdir()}
    proc = subprocess.Popen(script_command("explore.py", f"--graph_dir={mlp_build}", "--k=5",
                                           "--serve", "--port=0"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), proc.stderr.read()[-2000:]
        url = lines[-1].split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/index.html")
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"libjax-data" in response.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    path = mlp_build / "explorer" / "index.html"
    assert str(path) in "".join(lines)
    assert {p.name: p.stat().st_mtime_ns for p in (mlp_build / "stages").iterdir()} == before
    assert (mlp_build / "analysis" / "cards" / "layers.1.npz").is_file()
    assert clustering.load(mlp_build).settings["node_layers"] == ["layers.0", "layers.1",
                                                                 "layers.2"]  # no output
    stored = libjax.explore(mlp_build).data["layers"]  # what a notebook shows of the build
    assert all("card" in L for L in stored) and [("cluster" in L) for L in stored] == [
        True, True, True, False]
    g = graph_io.load(mlp_build)
    page, problems = open_page(browser, path)
    assert drawn(page)[0] == sum(g.dim(n) for n in g.node_layers)
    page.locator('[data-node="layers.1/2"]').click()
    card = page.locator("#card")
    assert card.locator("canvas.img").count() == 5  # top-activating images
    assert card.locator("canvas.heat").count() == 1  # the direction as an image
    assert "pixel correlation" in card.inner_text()
    assert problems == []


@pytest.mark.slow
def test_cluster_script_writes_the_clustering_and_its_figure(mlp_build):
    run = run_script("cluster.py", f"--graph_dir={mlp_build}", "--gamma=1.5", "--seed=2")
    assert run.returncode == 0, run.stderr[-2000:]
    stored = clustering.load(mlp_build)
    assert stored.settings["gamma"] == 1.5 and stored.settings["seed"] == 2
    assert f"{stored.n_clusters} clusters" in run.stdout
    assert (mlp_build / "analysis" / "clustering.png").stat().st_size > 1000
    bad = run_script("cluster.py", f"--graph_dir={mlp_build}", "--norm=log")
    assert bad.returncode == 2 and "needs eps" in bad.stderr and "Traceback" not in bad.stderr
