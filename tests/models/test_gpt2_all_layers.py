"""End to end: ``scripts/compute_basis.py --model=gpt2 --layer=all`` (and ranges) on a tiny random
4-block GPT-2: one graph per block in ``--out_dir/layer_<b>``, each equal bit for bit to the
build of that block alone, the statistics of all blocks from one pass and every step compiled
once (the log's ``compiling step`` lines, one per trace)."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from libjax import pipeline
from libjax.storage import graph
from models import registry
from models.family import Options
from models.lm import model as lm
from tests.helpers import hf_tiny
from tests.helpers.script_runs import assert_identical_graphs, run_script

N_LAYERS = 4
COMPILED = re.compile(r"compiling step '(.+)' \(trace (\d+)\)")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny random 4-block GPT-2 checkpoint with a tokenizer, and a directory of documents."""
    tmp = tmp_path_factory.mktemp("gpt2_all")
    ckpt, data = tmp / "ckpt", tmp / "data"
    hf_tiny.gpt2_numpy(ckpt, n_layer=N_LAYERS)
    hf_tiny.tokenizer(ckpt)
    data.mkdir()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.permutation(hf_tiny.CORPUS)) for _ in range(4)]
    (data / "stories.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return ckpt, data


def compute_basis(inputs, out, layer, *flags):
    """Run the script with no persistent compilation cache; the graphs it wrote (one directory,
    or one per block) and how often each step was compiled."""
    ckpt, data = inputs
    run = run_script("compute_basis.py", "--model=gpt2", f"--checkpoint={ckpt}",
                     f"--data_dir={data}", f"--layer={layer}", "--n_ctx=8", "--n_samples=2",
                     "--n_gram_samples=8", f"--out_dir={out}", "--compilation_cache_dir=", *flags,
                     timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    compiled = collections.Counter(m.group(1) for m in COMPILED.finditer(run.stderr))
    return run.stdout, compiled


def test_a_range_builds_each_block_from_one_statistics_pass(inputs, tmp_path):
    """``--layer=1-2`` (PCA, no edges: only the statistics step runs): two directories, two
    summaries, one statistics step over both blocks' node layers, and the second block's graph
    (whose first node layer is the first block's last) equal to its own build."""
    stdout, compiled = compute_basis(inputs, tmp_path, "1-2", "--basis=pca", "--noedges")
    assert compiled == {"means and Grams of 13 node layers": 1}, compiled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer_1", "layer_2"]
    for b in (1, 2):
        assert f"-> {tmp_path / f'layer_{b}'}" in stdout
        assert graph.load(tmp_path / f"layer_{b}").node_layers == lm.block_node_layers(b, N_LAYERS)
    family, g = registry.get("gpt2"), graph.load(tmp_path / "layer_2")
    opts = Options(checkpoint=str(inputs[0]), data_dir=str(inputs[1]), layer=2, n_ctx=8,
                   n_samples=2, n_gram_samples=8)
    data = family.data(opts)
    alone = pipeline.build(family.load_for_build(opts, family.node_layers(opts)), data.inputs,
                        pipeline.BuildConfig(**g.config), gram_inputs=data.gram_inputs)
    assert_identical_graphs(alone, g)


@pytest.mark.slow
def test_every_block_equals_its_own_build_and_each_step_compiles_once(inputs, tmp_path):
    """The LIB build of ``--layer=all`` against four ``--layer=b`` runs of the script."""
    _, compiled = compute_basis(inputs, tmp_path / "all", "all")
    # one statistics step, then per block: its first node layer, M' and the edges of its six
    # sections
    assert len(compiled) == 1 + N_LAYERS * 13 and set(compiled.values()) == {1}, compiled
    for b in range(N_LAYERS):
        compute_basis(inputs, tmp_path / f"alone_{b}", str(b))
        assert_identical_graphs(graph.load(tmp_path / f"alone_{b}"),
                                graph.load(tmp_path / "all" / f"layer_{b}"))
