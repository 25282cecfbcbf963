"""Language-model ablations (issue 22, docs/method.md 3.4): next-token labels packed as the
reference packs a corpus, held-out evaluation chunks, the chunked cross-entropy and KL scores,
and ``ablate.py`` / ``compare_bases.py`` end to end on a tiny random GPT-2 with a tokenizer
trained on the spot."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.ablation import metrics
from libjax.errors import DataError
from models.lm import evaluation
from tests.helpers.script_runs import run_script

pytest.importorskip("transformers")


# --- packing and held-out chunks ------------------------------------------------------------------

def test_labels_are_the_next_tokens_and_a_chunk_needs_the_token_after_it():
    tokens = np.arange(100, 123)  # 23 tokens, chunks of 5: 4 whole chunks and 3 left over
    assert list(evaluation.scored_chunks(len(tokens), 5)) == [0, 1, 2, 3]
    inputs, labels = evaluation.labelled(tokens, 5, [1, 3])
    np.testing.assert_array_equal(inputs, [[105, 106, 107, 108, 109], [115, 116, 117, 118, 119]])
    np.testing.assert_array_equal(labels, [[106, 107, 108, 109, 110], [116, 117, 118, 119, 120]])
    # 20 tokens: the 4th chunk has no next token, so the reference drops it, and so do we.
    assert list(evaluation.scored_chunks(20, 5)) == [0, 1, 2]


def test_held_out_chunks_are_the_last_tenth_less_those_the_build_drew():
    n_tokens, n_ctx = 1000 * 8 + 3, 8  # 1000 chunks, all scorable
    drawn = np.random.default_rng(0).permutation(1000)[:600]
    held = evaluation.held_out(n_tokens, n_ctx, drawn)
    assert held.min() >= 900 and not set(held) & set(drawn)
    assert set(held) | (set(range(900, 1000)) & set(drawn)) == set(range(900, 1000))
    with pytest.raises(DataError, match="--data_dir"):
        evaluation.held_out(n_tokens, n_ctx, np.arange(1000))


# --- scores ---------------------------------------------------------------------------------------

def _direct_nll(logits, labels):
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return -np.take_along_axis(np.asarray(logp), np.asarray(labels)[..., None], -1)[..., 0]


def test_token_scores_are_chunked_and_exact():
    """More tokens than one chunk of the float64 log-softmax: the sums equal a direct float64
    computation; KL to itself is 0 and KL is the textbook sum; padding samples weigh nothing."""
    assert jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    b, p, v = 3, 2 * metrics.TOKEN_CHUNK // 3 + 5, 17
    logits = rng.normal(size=(b, p, v)).astype(np.float32) * 3
    other = rng.normal(size=(b, p, v)).astype(np.float32)
    labels = rng.integers(0, v, size=(b, p))
    weights = np.array([1.0, 1.0, 0.0])
    total, count = metrics.metric_sums("ce_loss", jnp.asarray(logits), jnp.asarray(labels),
                                       jnp.asarray(weights))
    assert float(count) == 2 * p
    assert float(total) == pytest.approx(_direct_nll(logits, labels)[:2].sum(), rel=1e-12)
    zero, _ = metrics.metric_sums("kl", jnp.asarray(logits), jnp.asarray(labels),
                                  jnp.asarray(weights), jnp.asarray(logits))
    assert abs(float(zero)) < 1e-9
    kl, _ = metrics.metric_sums("kl", jnp.asarray(other), jnp.asarray(labels),
                                jnp.asarray(weights), jnp.asarray(logits))
    lp = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), -1))
    lq = np.asarray(jax.nn.log_softmax(other.astype(np.float64), -1))
    assert float(kl) == pytest.approx((np.exp(lp) * (lp - lq)).sum(-1)[:2].sum(), rel=1e-12)


# --- the scripts on a tiny GPT-2 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random GPT-2 with a trained tokenizer, a corpus, and its block-1 LIB build."""
    from tests.helpers import hf_tiny

    tmp = tmp_path_factory.mktemp("lm")
    ckpt, data = tmp / "gpt2", tmp / "data"
    hf_tiny.gpt2(ckpt)
    hf_tiny.tokenizer(ckpt)
    data.mkdir()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.permutation(hf_tiny.CORPUS)) for _ in range(40)]
    (data / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp / "lib"
    run = run_script("compute_basis.py", "--model=gpt2", f"--checkpoint={ckpt}",
                     f"--data_dir={data}", "--layer=1", "--n_ctx=8", "--n_samples=6",
                     "--n_gram_samples=24", f"--out_dir={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, ckpt, data, out


def test_build_records_its_corpus_and_context(tiny_lm):
    _, _, data, out = tiny_lm
    record = json.loads((out / "build.json").read_text())["data"]
    assert record["data_dir"] == str(data) and record["n_ctx"] == 8 and record["seed"] == 0
    assert record["n_chunks"] == record["n_tokens"] // 8


def test_ablate_scores_next_tokens_on_held_out_chunks(tiny_lm):
    """No --data_dir, --n_ctx or --model: the build record says it all. The loss is the
    reference's (per-token mean per batch, mean over batches) of the model's own logits."""
    tmp, ckpt, data, out = tiny_lm
    run = run_script("ablate.py", f"--graph_dir={out}", "--n_samples=30", "--batch_size=8",
                     "--node_layers=ln2_out.1", "--plot=false", f"--out_dir={tmp / 'abl'}")
    assert run.returncode == 0, run.stderr[-3000:]
    node = json.loads((tmp / "abl" / "lib_lib_ablation_results.json").read_text())
    edge = json.loads((tmp / "abl" / "lib_edge_ablation_results.json").read_text())
    cfg = node["config"]
    assert cfg["evaluation_data"] == "held-out chunks of the build corpus"
    assert cfg["metric"] == "ce_loss" and cfg["n_samples"] == 30 and cfg["n_ctx"] == 8
    assert cfg["schedule"]["kind"] == "linear" and cfg["schedule"]["n_points"] == 20
    assert len(node["results"]["ln2_out.1"]) == 19  # 20 points on 18 directions: every value
    # No direction left, the constant's included: every folded bias downstream goes with it, as in
    # the reference (the LayerNorm carries the residual's constant), so the logits are 0.
    assert node["results"]["ln2_out.1"]["0"] == pytest.approx(np.log(64), rel=1e-6)
    assert edge["n_edges_required"]["ln2_out.1"] >= 1

    from models.opened import open_build  # the same loss, computed directly
    build = open_build(out)
    opts = dataclasses.replace(build.opts, n_samples=30, dtype="float32")
    ev_data = build.family.evaluation_data(opts, build.info, None)
    drawn = np.random.default_rng(0).permutation(json.loads(
        (out / "build.json").read_text())["data"]["n_chunks"])[:24]
    assert ev_data.source["first_chunk"] not in drawn
    model = build.family.load(opts, build.graph.node_layers)
    logits = jax.vmap(lambda x: model.forward(model.params, x))(jnp.asarray(ev_data.inputs))
    nll = _direct_nll(np.asarray(logits, np.float32), ev_data.labels)
    per_batch = [nll[i:i + 8].mean() for i in range(0, 30, 8)]
    assert node["no_ablation_result"] == pytest.approx(np.mean(per_batch), rel=1e-6)


def test_ablate_with_data_dir_uses_it_whole_and_kl_starts_at_zero(tiny_lm):
    tmp, _, data, out = tiny_lm
    tokens = np.random.default_rng(1).integers(1, 64, size=8 * 12 + 1)
    np.save(tmp / "eval.npy", tokens)
    run = run_script("ablate.py", f"--graph_dir={out}", f"--data_dir={tmp / 'eval.npy'}",
                     "--metric=kl", "--ablations=node", "--node_layers=attn_in.1",
                     "--schedule=explicit", "--specific_points=0,10", "--plot=false",
                     f"--out_dir={tmp / 'kl'}")
    assert run.returncode == 0, run.stderr[-3000:]
    node = json.loads((tmp / "kl" / "lib_lib_ablation_results.json").read_text())
    assert node["config"]["evaluation_data"] == "--data_dir, used whole"
    assert node["config"]["n_samples"] == 12 and node["no_ablation_result"] == 0.0
    scores = node["results"]["attn_in.1"]
    assert scores["0"] > scores["10"] > 0  # ablating more moves the distribution further


def test_ablate_refuses_a_corpus_that_changed_since_the_build(tiny_lm, tmp_path):
    _, ckpt, data, _ = tiny_lm
    changed = tmp_path / "data"
    changed.mkdir()
    lines = (data / "docs.jsonl").read_text().splitlines(keepends=True)
    (changed / "docs.jsonl").write_text("".join(lines[:-1]))  # one document fewer
    out = tmp_path / "lib"
    run = run_script("compute_basis.py", "--model=gpt2", f"--checkpoint={ckpt}",
                     f"--data_dir={changed}", "--layer=1", "--n_ctx=8", "--n_samples=6",
                     "--n_gram_samples=24", "--edges=false", f"--out_dir={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    (changed / "docs.jsonl").write_text((data / "docs.jsonl").read_text())
    run = run_script("ablate.py", f"--graph_dir={out}", "--ablations=node", "--plot=false")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "has changed since the build" in run.stderr


@pytest.mark.slow
def test_compare_bases_on_a_language_model(tiny_lm):
    tmp, ckpt, data, _ = tiny_lm
    out = tmp / "cmp"
    run = run_script("compare_bases.py", "--model=gpt2", f"--checkpoint={ckpt}",
                     f"--data_dir={data}", "--layer=1", "--n_ctx=8", "--n_samples=6",
                     "--n_gram_samples=24", "--n_eval_samples=30", f"--out_dir={out}",
                     timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["metric"] == "ce_loss" and set(summary["sections"]) == {"attention", "MLP"}
    for part in summary["sections"].values():
        for basis in ("lib", "pca"):
            assert 0 < part["edges_required"][basis] <= part["possible_edges"]
    assert "| attention sections |" in (out / "table.md").read_text()
