"""End to end: ``scripts/compute_basis.py --model=gpt2 --layer=1`` on a tiny random GPT-2 checkpoint
with a tokenizer trained on the spot and a small text corpus; the written graph satisfies
docs/method.md 1.9,
including LayerNorm-variance isolation at ``ln1_out``/``ln2_out``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libjax.storage import graph
from models.lm import model as lm
from tests.helpers import hf_tiny
from tests.helpers.invariants import assert_spec_1_9

ROOT = Path(__file__).resolve().parents[2]
LAYERS = lm.block_node_layers(1, 2)  # ln1.1 ... mlp_in.1, ln_final
LN_VAR = ("ln1_out.1", "ln2_out.1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny random GPT-2 checkpoint with a tokenizer, and a directory of documents."""
    tmp = tmp_path_factory.mktemp("gpt2_build")
    ckpt, data = tmp / "ckpt", tmp / "data"
    hf_tiny.gpt2_numpy(ckpt, n_layer=2)
    hf_tiny.tokenizer(ckpt)
    data.mkdir()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.permutation(hf_tiny.CORPUS)) for _ in range(4)]
    (data / "stories.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:]))
    (data / "one.txt").write_text(docs[0])
    return ckpt, data


def compute_basis(inputs, out, *flags):
    ckpt, data = inputs
    cmd = [sys.executable, "scripts/compute_basis.py", "--model=gpt2", f"--checkpoint={ckpt}",
           f"--data_dir={data}", "--layer=1", "--n_ctx=8", f"--out_dir={out}", *flags]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return graph.load(out)


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    return compute_basis(inputs, tmp_path_factory.mktemp("gpt2_out") / "out", "--n_samples=6",
                         "--n_gram_samples=24")


def test_zero_sources_ask_for_exact_sums(inputs, tmp_path):
    """The family's default is one position source; 0 on the command line means exact."""
    g = compute_basis(inputs, tmp_path / "out", "--n_samples=2", "--n_gram_samples=8", "--noedges",
                      "--n_stochastic_sources_basis_pos=0", "--n_stochastic_sources_edges=0")
    assert g.config["n_stochastic_sources_basis_pos"] is None
    assert g.config["n_stochastic_sources_edges"] is None


def test_graph_has_the_block_and_the_paper_settings(built):
    assert built.node_layers == LAYERS
    cfg = built.config
    assert cfg["n_stochastic_sources_basis_pos"] == 1 and cfg["n_stochastic_sources_edges"] == 1
    assert cfg["rotate_final_node_layer"] and cfg["center"] and cfg["isolate_ln_var"]
    assert built.orig_dims == dict(zip(LAYERS, (17, 18, 34, 17, 18, 34, 17)))
    final = built.bases["ln_final"]
    assert final.kind == "pca"
    np.testing.assert_array_equal(final.C, final.W)


def test_bases_satisfy_spec_1_9(built):
    assert_spec_1_9(built, LAYERS, LN_VAR)


def test_ln_variance_is_isolated(built):
    for name in LN_VAR:
        b = built.bases[name]
        # direction 1 is the variance: its row of C_pinv is proportional to e_0 ...
        assert abs(b.C_pinv[1, 0]) > 0
        np.testing.assert_allclose(b.C_pinv[1, 1:], 0, atol=1e-12 * abs(b.C_pinv[1, 0]))
        # ... and no direction other than the constant one reads coordinate 0 (the variance)
        np.testing.assert_allclose(b.C_pinv[2:, 0], 0, atol=1e-12 * np.abs(b.C_pinv).max())
        assert b.Lambda[1] > 0


def test_edges(built):
    for a, b in built.edge_pairs:
        e = built.edges[(a, b)]
        assert e.shape == (built.dim(b), built.dim(a))
        assert np.all(np.isfinite(e)) and np.all(e >= 0) and e.sum() > 0
