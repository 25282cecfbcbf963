"""The graph explorer (libjax.analysis.explorer, scripts/explore.py, scripts/cluster.py): the
page's data in Python, then the page itself in headless Chromium from file://: the nodes and
edges it draws, its controls against the same filter computed in Python, its cards, no console
errors; the notebook object; the scripts end to end on the shipped digits MLP."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import numpy as np
import pytest

import libjax
from libjax import ablation, pipeline
from libjax.analysis import clustering, explorer
from libjax.basis import Basis
from libjax.errors import ConfigError, StoreError
from libjax.storage import graph as graph_io
from libjax.storage.graph import Graph
from models import registry
from models.family import Options
from models.opened import open_build
from tests.helpers import synthetic_graphs
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
    for t, (_pair, E) in zip(data["transitions"], g.edges.items()):
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
    return open_page_at(browser, path.resolve().as_uri(), timeout=30_000)


def drawn(page):
    """Nodes drawn, and edges passing the controls (the edges are painted on a canvas)."""
    return (page.locator("[data-node]").count(),
            int(page.locator("#status").get_attribute("data-passing")))


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
    assert "edges drawn" in page.locator("#tip").inner_text()
    node.click()
    card = page.locator("#card")
    assert card.get_attribute("data-card") == "b/3"
    assert "b feature 3" in card.inner_text() and "summary 3" in card.inner_text()
    assert card.locator("canvas.heat").count() == 1  # no key frequency: natural order only
    assert page.locator("circle.chosen").count() == 1
    page.fill("#search", "feature 1")
    want = sum("feature 1" in text for L in data["layers"] for text in L["labels"])
    assert page.locator("circle.match").count() == want == 5  # a/1, b/1, c/1, c/10, c/11
    assert page.locator("#search-count").inner_text().startswith("5 matches")
    page.locator('[data-node="c/0"]').click()
    assert TRICKY in card.inner_text()
    page.mouse.wheel(0, -300)  # zoom does not break anything
    assert problems == []


def test_page_of_a_graph_without_edges(browser, tmp_path):
    g = synthetic_graphs.graph({"a": 3, "b": 4}, {"a": 3, "b": 4}, edges={})  # --noedges build
    page, problems = open_page(browser, explorer.explore(g).save(tmp_path / "p.html"))
    assert drawn(page) == (7, 0) and problems == []


def passing_edges(data, share=explorer.DEFAULT_SHARE):
    """Per transition, the edges the page's filter passes (top-k off, no constant edges):
    ``(src, dst, w)`` arrays, strongest first."""
    out = []
    for t, n in zip(data["transitions"], explorer.visible_edge_counts(data, share)):
        idx = np.flatnonzero(~explorer.decode(t["const"]).astype(bool))[:n]
        out.append((explorer.decode(t["src"])[idx], explorer.decode(t["dst"])[idx],
                    explorer.decode(t["w"])[idx].astype(np.float64)))
    return out


def node_ids(page):
    """The drawn nodes' ids, each layer's from top to bottom."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('circle.node'))
        .sort((a, b) => a.cy.baseVal.value - b.cy.baseVal.value).map((c) => c.dataset.node)""")


def screen_box(page, node):
    return page.locator(f'[data-node="{node}"]').bounding_box()


def test_first_view_shows_the_largest_directions_first_legibly(browser, tmp_path):
    dims = {"a": 40, "b": 60, "c": 30}
    g = synthetic_graphs.graph(dims, dims, seed=3)
    data = explorer.page_data(g)
    page, problems = open_page(browser, explorer.Explorer(data).save(tmp_path / "p.html"))
    ids = node_ids(page)
    for name in dims:
        shown = [i for i in ids if i.startswith(f"{name}/")]
        sizes = explorer.decode(data["layers"][list(dims).index(name)]["size"])
        order = np.argsort(-sizes, kind="stable")
        assert shown[:24] == [f"{name}/{j}" for j in order[:24]]  # the 24 largest, in order
        assert shown[24:] == [f"{name}/rest"]  # the tail: one node
    px = page.evaluate("""() => Array.from(document.querySelectorAll('text.nlabel')).map((t) =>
        parseFloat(getComputedStyle(t).fontSize) * document.getElementById('graph')
        .getScreenCTM().a)""")
    assert len(px) == len(ids) and min(px) >= 11  # legible labels, on screen
    texts = page.locator("text.nlabel").all_text_contents()
    assert "+36 more (click)" in texts
    assert drawn(page)[1] == sum(explorer.visible_edge_counts(data))
    # edge widths: one scale across transitions, or each transition's own
    widths = """() => drawn.map((e) => relWidth(e, 0))"""  # each transition's widest edge
    strongest = [float(e) for e in page.evaluate("() => drawn.map((e) => e.max)")]
    one_scale = page.evaluate(widths)
    assert one_scale == pytest.approx([np.sqrt(m / max(strongest)) for m in strongest])
    assert min(one_scale) < 1
    page.locator("#per-transition").check()
    assert page.evaluate(widths) == pytest.approx([1.0] * len(strongest))
    page.locator('[data-node="b/rest"]').click()  # the tail, expanded
    assert len([i for i in node_ids(page) if i.startswith("b/")]) == 60
    before = page.evaluate("state.k")
    page.click("#zoom-in")
    assert page.evaluate("state.k") == pytest.approx(before * 1.2)
    page.mouse.move(300, 300)
    for notch in (100, -100, 300):  # a wheel notch zooms at most one button step
        k = page.evaluate("state.k")
        page.mouse.wheel(0, notch)
        page.wait_for_timeout(50)
        assert 1 / 1.2 - 1e-9 <= page.evaluate("state.k") / k <= 1.2 + 1e-9
        assert page.evaluate("state.k") != k
    page.click("#fit-column")
    box = page.locator("#graph").bounding_box()
    top, bottom = screen_box(page, "a/0"), screen_box(page, "a/rest")
    assert top["y"] >= box["y"] - 1 and bottom["y"] + bottom["height"] <= box["y"] + box["height"]
    assert problems == []


def test_paths_hover_search_and_links(browser, tmp_path):
    g = small_graph()
    data = explorer.page_data(g)
    page, problems = open_page(browser, explorer.Explorer(data).save(tmp_path / "p.html"))
    edges = passing_edges(data)
    names = [L["name"] for L in data["layers"]]
    page.locator('[data-node="b/3"]').hover()  # hover: the node's drawn edges
    touching = ((edges[0][1] == 3).sum() + (edges[1][0] == 3).sum())
    assert int(page.locator("#status").get_attribute("data-hover-edges")) == touching
    page.locator('[data-node="b/3"]').click()
    nodes, links = {"b/3"}, set()  # the path, computed here: >= 0.1 x the strongest at b/3
    for t, end in ((1, 0), (0, 1)):  # downstream (b's out-edges), upstream (its in-edges)
        src, dst, w = edges[t]
        mine = (src if end == 0 else dst) == 3
        hit = mine & (w >= 0.1 * w[mine].max())
        nodes |= {f"c/{d}" for d in dst[hit]} if t == 1 else {f"a/{s}" for s in src[hit]}
        links |= {(s, d) for s, d in zip(src[hit], dst[hit])}
    onpath = set(page.evaluate("""() => Array.from(document.querySelectorAll('circle.onpath'))
        .map((c) => c.dataset.node)"""))
    assert onpath == nodes and len(nodes) > 2
    assert int(page.locator("#status").get_attribute("data-path-edges")) == len(links)
    assert names == ["a", "b", "c"]
    page.fill("#path-threshold", "0")  # every drawn edge that leads to or from b/3
    assert int(page.locator("#status").get_attribute("data-path-nodes")) >= len(nodes)
    # a card's link chooses the node and centres it
    link = page.locator("#card a[data-goto]").first
    target = link.get_attribute("data-goto")
    link.click()
    assert page.locator("#card").get_attribute("data-card") == target
    assert page.locator(f'[data-node="{target}"]').get_attribute("class").count("chosen") == 1
    box, node = page.locator("#graph").bounding_box(), screen_box(page, target)
    assert abs(node["x"] + node["width"] / 2 - (box["x"] + box["width"] / 2)) < 3
    assert abs(node["y"] + node["height"] / 2 - (box["y"] + box["height"] / 2)) < 3
    # search: its count, and Enter shows each match in turn
    page.fill("#search", "c/1")
    assert page.locator("#search-count").inner_text().startswith("3 matches")  # c/1, c/10, c/11
    page.press("#search", "Enter")
    assert page.locator("#card").get_attribute("data-card") == "c/1"
    page.press("#search", "Enter")
    assert page.locator("#card").get_attribute("data-card") == "c/10"
    assert problems == []


def test_supernodes_sum_edges_and_survive_in_the_address(browser, tmp_path):
    g = small_graph()
    data = explorer.page_data(g)
    path = explorer.Explorer(data).save(tmp_path / "p.html")
    page, problems = open_page(browser, path)
    page.locator('[data-node="c/2"]').click(modifiers=["Shift"])
    page.locator('[data-node="c/5"]').click(modifiers=["Shift"])
    page.fill("#group-name", "pair")
    page.click("#group")
    group = "c/group:pair"
    assert page.locator(f'[data-node="{group}"]').count() == 1
    assert page.locator('[data-node="c/2"]').count() == 0
    src, dst, w = passing_edges(data)[1]
    inside = np.isin(dst, [2, 5])
    want = {f"b/{s}": w[inside & (src == s)].sum() for s in np.unique(src[inside])}
    got = page.evaluate("""(id) => { const e = drawn[1], out = {};
        for (let n = 0; n < e.w.length; n++) if (e.B.items[e.d[n]].id === id)
          out[e.A.items[e.s[n]].id] = e.w[n];
        return out; }""", group)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6)  # float32 weights summed
    url = page.url
    assert "pair" in url
    again, more = open_page_at(browser, url)
    assert again.locator(f'[data-node="{group}"]').count() == 1
    assert again.locator("#card").get_attribute("data-card") == group  # chosen, as it was
    assert "members: 2, 5" in again.locator("#card").inner_text()
    # the same view saved beside the page (view.json) opens with a page written again
    view = json.loads(urllib.parse.unquote(url.split("#", 1)[1]))
    saved = explorer.write_view(view, tmp_path / explorer.VIEW_FILE)
    assert explorer.read_view(saved) == view
    path = explorer.Explorer(explorer.page_data(g, view=explorer.read_view(saved))).save(
        tmp_path / "again.html")
    third, most = open_page(browser, path)
    assert third.locator(f'[data-node="{group}"]').count() == 1
    assert problems == [] and more == [] and most == []


def test_a_broken_view_file_is_refused_with_what_to_do(tmp_path):
    assert explorer.read_view(tmp_path / "none.json") is None
    (tmp_path / "view.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a readable explorer view.*save the view again"):
        explorer.read_view(tmp_path / "view.json")
    (tmp_path / "view.json").write_text('{"groups": 3}')
    with pytest.raises(StoreError, match="not an explorer view"):
        explorer.read_view(tmp_path / "view.json")
    with pytest.raises(ConfigError, match="'groups' is a list"):
        explorer.write_view({"groups": "x"}, tmp_path / "v.json")


def open_page_at(browser, url, timeout=60_000):
    """The page at ``url``, ready; returns it and its console's complaints."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=timeout)
    return page, problems


def gpt2_sized():
    """A GPT-2-small block's shape: 7 node layers, 7 687 directions, 7.1 million heavy-tailed
    edges. The bases hold only what the page reads (heavy-tailed Lambdas, the number of
    directions), so that making the graph takes a second, not a random basis's SVDs."""
    rng = np.random.default_rng(4)
    dims = {"ln1.6": 769, "ln1_out.6": 769, "ln2.6": 769, "ln2_out.6": 769, "mlp_act.6": 3073,
            "mlp_out.6": 769, "ln1.7": 769}
    names = tuple(dims)
    bases = {}
    for n, d in dims.items():
        lam = np.sort(rng.exponential(size=d) ** 4)[::-1]
        stub = np.zeros((1, d))
        bases[n] = Basis(C=stub, C_pinv=stub.T, W=stub, W_pinv=stub.T, Lambda=lam,
                         gram_eigenvalues=lam, kind="lib")
    edges = {(a, b): rng.exponential(size=(dims[b], dims[a])) ** 3
             for a, b in zip(names[:-1], names[1:])}
    return Graph(node_layers=names, bases=bases, edges=edges, means={}, grams={},
                 orig_dims=dict(dims), config={"basis": "lib", "center": True})


@pytest.mark.slow
def test_a_gpt2_sized_graph_opens_and_redraws_within_100_ms(browser, tmp_path):
    g = gpt2_sized()
    assert sum(E.size for E in g.edges.values()) > 5_900_000
    data = explorer.page_data(g)
    page, problems = open_page(browser, explorer.Explorer(data).save(tmp_path / "p.html"))
    times = []
    for share in (0.9, 0.95, 0.5, 0.98):
        page.fill("#share", str(share))
        times.append(float(page.locator("#status").get_attribute("data-redraw-ms")))
        assert drawn(page)[1] == sum(explorer.visible_edge_counts(data, share))
    page.fill("#topk", "3")
    times.append(float(page.locator("#status").get_attribute("data-redraw-ms")))
    assert max(times) < 100, times
    assert problems == []


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
    pipeline.build(model, data.inputs, pipeline.BuildConfig(), gram_inputs=data.gram_inputs,
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


def test_explore_script_serves_signed_cards_and_interventions(mlp_build, browser):
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
        path = mlp_build / "explorer" / "index.html"
        assert str(path) in "".join(lines)
        assert (mlp_build / "analysis" / "cards" / "layers.1.npz").is_file()
        assert clustering.load(mlp_build).settings["node_layers"] == ["layers.0", "layers.1",
                                                                     "layers.2"]  # no output
        stored = libjax.explore(mlp_build).data["layers"]  # what a notebook shows of the build
        assert all("card" in L for L in stored) and [("cluster" in L) for L in stored] == [
            True, True, True, False]
        opened = open_build(mlp_build)
        g = opened.graph
        page, problems = open_page_at(browser, url)
        # first view: each layer's largest directions, then one "rest" node
        ids = node_ids(page)
        assert len(ids) < sum(g.dim(n) for n in g.node_layers)
        assert f"{g.node_layers[0]}/rest" in ids
        # signed cards: the largest and the smallest activations apart, each with its value
        page.locator('[data-node="layers.1/2"]').click()
        card = page.locator("#card")
        top = [float(x.split()[0]) for x in card.locator(".imgs.top figcaption").all_inner_texts()]
        low = [float(x.split()[0]) for x in card.locator(".imgs.bottom figcaption")
               .all_inner_texts()]
        assert len(top) == len(low) == 5 and top == sorted(top, reverse=True)
        assert low == sorted(low) and min(top) > max(low) and top[0] > 0 > low[0]
        assert card.locator("canvas.hist").count() == 1
        assert card.locator("table.raises tr").count() == 5
        assert "pixel correlation" in card.inner_text()
        assert card.locator(".source").inner_text() == "examples from n_samples 1437"
        page.locator('[data-node="output/3"]').click()  # a logit's card names its own class
        text = card.inner_text()
        assert "logit 3 (class 3)" in text
        assert card.locator("table.raises tr").first.inner_text().startswith("class 3")
        classes = [x.split()[-1] for x in card.locator(".imgs.top figcaption").all_inner_texts()]
        assert classes.count("3") >= 3
        # an intervention: the page asks the server, which ablates with libjax.ablation
        page.locator('[data-node="layers.1/2"]').click()
        page.click("#ablate")
        page.wait_for_selector("#ablate-out[data-ablated]", timeout=120_000)
        shown = float(page.locator("#ablate-out").get_attribute("data-ablated"))
        defaults = opened.family.ablation_defaults(opened.opts)
        data = opened.family.data(dataclasses.replace(opened.opts, split=defaults["split"],
                                                      n_samples=None, n_gram_samples=None))
        ev = ablation.Evaluator(opened.model, data.inputs, data.labels, defaults["metric"])
        b = g.basis("layers.1")
        keep = np.ones(b.C.shape[1])
        keep[2] = 0
        want = ev.node_score(g.node_layers.index("layers.1"), (b.C * keep) @ b.C_pinv)
        assert shown == pytest.approx(want, abs=1e-12)
        assert float(page.locator("#ablate-out").get_attribute("data-base")) == ev.base()
        # the view, kept beside the page by the server
        page.locator('[data-node="layers.1/1"]').click(modifiers=["Shift"])
        page.locator('[data-node="layers.1/3"]').click(modifiers=["Shift"])
        page.fill("#group-name", "ends")
        page.click("#group")
        page.click("#save-view")
        page.wait_for_selector("#group-msg[data-saved]", timeout=30_000)
        view = explorer.read_view(path.with_name(explorer.VIEW_FILE))
        assert view["groups"] == [{"name": "ends", "layer": "layers.1", "members": [1, 3]}]
        # a share above what the page holds: the server sends the missing edges
        page.fill("#share", "1")
        page.wait_for_selector("#status[data-streamed]", timeout=60_000)
        page.wait_for_function("document.getElementById('status').dataset.streamed >= 1")
        full = {"transitions": [explorer.transition(g, a, b, 1.0, 2_000_000)
                                for a, b in g.edge_pairs]}
        page.wait_for_timeout(300)
        assert drawn(page)[1] == sum(explorer.visible_edge_counts(full, 1.0))
        assert problems == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert {p.name: p.stat().st_mtime_ns for p in (mlp_build / "stages").iterdir()} == before


def test_explore_script_checks_its_flags_first(tmp_path):
    for flag, words in (("--max_edges=0", "max_edges"), ("--port=70000", "--port")):
        run = run_script("explore.py", f"--graph_dir={tmp_path / 'none'}", flag)
        assert run.returncode == 2 and words in run.stderr, (flag, run.stderr[-500:])
        assert "Traceback" not in run.stderr and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_cluster_script_writes_the_clustering_and_its_figure(mlp_build):
    run = run_script("cluster.py", f"--graph_dir={mlp_build}", "--gamma=1.5", "--seed=2")
    assert run.returncode == 0, run.stderr[-2000:]
    stored = clustering.load(mlp_build)
    assert stored.settings["gamma"] == 1.5 and stored.settings["seed"] == 2
    assert f"{stored.n_clusters} clusters" in run.stdout
    assert (mlp_build / "analysis" / "clustering.png").stat().st_size > 1000
    bad = run_script("cluster.py", f"--graph_dir={mlp_build}", "--norm=log")
    assert bad.returncode == 2 and "pass --eps" in bad.stderr and "Traceback" not in bad.stderr
