"""Bad input through the real command lines: every case ends the script with a non-zero status
and a one-line ``error: ...`` naming what was wrong (absl's own two-line message for flags it
rejects itself), no traceback, and nothing that was in the output location before damaged.

Each case runs one script in a fresh interpreter (about 2-3 s of start-up); variants of a case
are marked slow. The output location (``{out}``: ``--out_dir``, ``--graph_dir`` or ``--out``)
holds, before the run, a finished build (``build``), the same with its summary removed
(``interrupted``), a plain file (``file``) or nothing (``none``: for failures that can only show
up during the build, after which the directory must not pass for a finished build).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from libjax.errors import StoreError
from libjax.pipeline import BuildConfig, build
from libjax.storage import graph
from models.common import checkpoints
from models.mlp import model as mlp
from models.modadd import model as modadd
from tests.helpers import hf_tiny
from tests.helpers.script_runs import run_script, snapshot
from tests.helpers.tiny import tiny_transformer


@dataclasses.dataclass(frozen=True)
class Case:
    script: str
    args: tuple[str, ...]
    says: tuple[str, ...]  # parts of the message
    before: str = "build"  # what {out} holds before the run
    status: int = 2  # 1: absl rejected the flag itself
    max_file_bytes: int | None = None


def compute(*args, says, **kw) -> Case:
    return Case("compute_basis.py", ("--n_samples=10", "--out_dir={out}") + args, says, **kw)


MODADD, NONE = "{files}/modadd.npz", "none"
GPT2 = ("--model=gpt2", "--checkpoint={files}/gpt2", "--n_ctx=8")

CASES = {
    # models and node layers
    "unknown model": compute("--model=resnet", says=("unknown model 'resnet'", "modadd, mlp")),
    "unknown node layer": compute("--node_layers=ln1.0,nope,output",
                                  says=("unknown node layer 'nope'", "valid node layers in order",
                                        "ln2.0")),
    "duplicated node layer": compute("--node_layers=ln1.0,ln1.0,output",
                                     says=("['ln1.0'] listed more than once", "ln2.0")),
    "node layers out of order": compute("--node_layers=ln2.0,ln1.0,output",
                                        says=("out of order", "ln1.0, ln1_out.0")),
    "one node layer": compute("--node_layers=ln1.0", says=("at least two node layers",)),
    "MLP node layers not consecutive": compute(
        "--model=mlp", "--node_layers=layers.0,layers.2", says=("must be consecutive",)),
    "block that does not exist": compute("--layer=3", says=("one block", "--layer=3")),
    "GPT-2 block that does not exist": compute(*GPT2, "--layer=7", says=("blocks 0..1",)),
    "blocks in no form --layer knows": compute(*GPT2, "--layer=0;1",
                                               says=("'0;1' is not a block", "a range (4-7)")),
    "GPT-2 blocks that do not exist": compute(*GPT2, "--layer=0-4",
                                              says=("blocks 0..1", "[2, 3, 4]")),
    "a range that goes down": compute(*GPT2, "--layer=1-0", says=("a range goes up",)),
    "a block listed twice": compute(*GPT2, "--layer=1,0,1", says=("[1] more than once",)),
    "several blocks with node layers": compute(*GPT2, "--layer=all", "--node_layers=ln1.0,ln2.0",
                                               says=("--layer or --node_layers",)),
    "several blocks of a one-graph model": compute("--layer=all", says=("one graph per block",)),
    # checkpoints
    "missing checkpoint": compute("--checkpoint={files}/nowhere.npz",
                                  says=("nowhere.npz does not exist",)),
    "truncated checkpoint": compute("--checkpoint={files}/truncated.npz",
                                    says=("truncated.npz is truncated or not a valid",)),
    "corrupt checkpoint": compute("--checkpoint={files}/garbage.npz",
                                  says=("garbage.npz is truncated or not a valid",)),
    "single array, not an archive": compute("--checkpoint={files}/array.npy",
                                            says=("not a valid '.npz'", "single array")),
    "checkpoint is a directory": compute("--checkpoint={files}", says=("is a directory",)),
    "weight of the wrong shape": compute("--checkpoint={files}/narrow.npz",
                                         says=("wrong shape", "blocks.0.mlp.W_in")),
    "weight missing": compute("--checkpoint={files}/no_bias.npz",
                              says=("lacks weights ['unembed.b_U']",)),
    "weight the model does not use": compute("--checkpoint={files}/extra.npz",
                                             says=("does not use", "blocks.1.mlp.W_in")),
    "NaN weight": compute("--checkpoint={files}/nan.npz", says=("'unembed.W_U' contains NaN",)),
    "checkpoint of another model": compute("--checkpoint=models/assets/mlp_digits_50_50.npz",
                                           says=("checkpoint of model 'mlp'",)),
    "MLP given a transformer": compute("--model=mlp", f"--checkpoint={MODADD}",
                                       says=("not of an MLP",)),
    "HF directory without config": compute("--model=gpt2", "--checkpoint={files}",
                                           says=("has no config.json",)),
    # data
    "zero samples": compute("--n_samples=0", says=("--n_samples must be >= 1, got 0",)),
    "negative samples": compute("--n_samples=-5", says=("--n_samples must be >= 1, got -5",)),
    "more samples than data": compute("--n_samples=99999",
                                      says=("has 3830 samples, fewer than --n_samples=99999",)),
    "zero Gram samples": compute("--n_gram_samples=0", says=("--n_gram_samples must be >= 1",)),
    "unknown split": compute("--split=validation", says=("unknown split 'validation'",)),
    "data option the model ignores": compute("--data_dir={files}",
                                             says=("does not take --data_dir",)),
    "data directory without image files": compute(
        "--model=mlp", "--checkpoint={files}/mnist_mlp.npz", "--data_dir={files}/empty",
        says=("no MNIST files in", "train-images-idx3-ubyte")),
    "data directory that does not exist": compute(
        "--model=mlp", "--checkpoint={files}/mnist_mlp.npz", "--data_dir={files}/nowhere",
        says=("does not exist or is not a directory",)),
    "images of the wrong size": compute("--model=mlp", "--dataset=cifar10",
                                        says=("3072 pixels", "takes 64 inputs")),
    "corpus directory without corpus files": compute(
        *GPT2, "--data_dir={files}/empty", says=("has no corpus files (.txt, .jsonl, .npy)",)),
    "token ids outside the vocabulary": compute(
        *GPT2, "--data_dir={files}/big_ids", says=("outside the model's vocabulary [0, 64)",)),
    "corpus smaller than the samples": compute(
        *GPT2, "--data_dir={files}/short", "--n_samples=50", says=("fewer than the 50 samples",)),
    "context longer than the model's": compute(*GPT2, "--n_ctx=100",
                                               says=("--n_ctx=100 does not fit",)),
    # options
    "zero batch size": compute("--batch_size=0", says=("batch sizes must be >= 1, got 0",)),
    "negative edge batch size": compute("--edge_batch_size=-2",
                                        says=("batch sizes must be >= 1, got -2",)),
    "unknown dtype": compute("--dtype=float16", status=1,
                             says=("--dtype=float16", "<float64|float32>")),
    "unknown basis": compute("--basis=ica", status=1, says=("--basis=ica",)),
    "gradient rule with intervals": compute("--n_intervals=3", says=("takes no intervals",)),
    "negative intervals": compute("--integration=gauss-legendre", "--n_intervals=-1",
                                  says=("n_intervals must be >= 0",)),
    "stochastic sources with PCA": compute("--basis=pca", "--n_stochastic_sources_basis_pos=1",
                                           says=("only apply to the lib (jacobian) basis",)),
    "negative stochastic sources": compute(
        "--n_stochastic_sources_edges=-1",
        says=("--n_stochastic_sources_edges must be >= 0 (0: exact sums), got -1",)),
    "position sources without positions": compute(
        "--model=mlp", "--n_stochastic_sources_edges=1",
        says=("need activations with a sequence axis",)),
    "centred neuron basis": compute("--basis=neuron", says=("cannot be centred", "--nocenter")),
    "centred rotation of the output": compute("--rotate_final_node_layer",
                                              says=("rotation of the 'output' node layer",)),
    "negative truncation threshold": compute("--truncation_threshold=-1",
                                             says=("finite number >= 0, got -1.0",)),
    "NaN truncation threshold": compute("--truncation_threshold=nan",
                                        says=("finite number >= 0, got nan",)),
    "zero memory budget": compute("--memory_budget_gb=0", says=("memory_budget_gb must be",)),
    "negative seed": compute("--seed=-1", says=("seed must be >= 0",)),
    "stray argument": compute("ln1.0", says=("unexpected argument(s) 'ln1.0'",)),
    # the output directory
    "output directory is a file": compute(before="file", says=("is a file",)),
    "output directory inside a file": Case("compute_basis.py", ("--n_samples=10",
                                                                "--out_dir={out}/graph"),
                                           ("cannot create output directory", "Not a directory"),
                                           before="file"),
    "a different build in the output directory": compute(
        "--n_samples=11", says=("holds a different build", "n_samples", "--overwrite")),
    "another dtype for the same output": compute(
        f"--checkpoint={MODADD}", "--dtype=float32",
        says=("holds a different build (differs in: params_sha256)",)),
    "full disk": compute(before=NONE, max_file_bytes=64 * 1024,
                         says=("could not write stage 'stats'", "File too large",
                               "rerun the same command")),
    # numerical faults, found during the build
    "inf activations": compute("--checkpoint={files}/huge.npz", before=NONE,
                               says=("NaN or inf in the activations of node layer(s) ['ln2.0'",
                                     "means and Grams")),
    "float32 overflow": compute("--checkpoint={files}/f32_overflow.npz", "--dtype=float32",
                                before=NONE, says=("NaN or inf in the activations",
                                                   "--dtype=float64")),
    "inf Gram matrix": compute("--model=mlp", "--checkpoint={files}/mlp_gram.npz", before=NONE,
                               says=("the Gram matrix of 'layers.1' contains NaN or inf",)),
    "inf M'": compute("--model=mlp", "--checkpoint={files}/mlp_m_prime.npz", before=NONE,
                      says=("M' of node layer 'layers.2' contains NaN or inf",)),
    "truncation leaving no direction": compute(
        "--truncation_threshold=1e30", "--nocenter", before=NONE,
        says=("node layer 'unembed'", "no direction is left")),
    # the other scripts
    "training that never logs": Case("train_modadd.py", ("--log_every=0", "--out={out}"),
                                     ("--log_every must be >= 1",), before="file"),
    "training rate zero": Case("train_modadd.py", ("--lr=0", "--out={out}"),
                               ("--lr must be > 0",), before="file"),
    "checkpoint path is a directory": Case("train_modadd.py", ("--out={files}",),
                                           ("is a directory",), before=NONE),
    "hidden widths that are not numbers": Case("train_mlp.py", ("--hidden=50,abc", "--out={out}"),
                                               ("--hidden must be", "'50,abc'"), before="file"),
    "zero hidden width": Case("train_mlp.py", ("--hidden=0", "--out={out}"),
                              ("widths >= 1",), before="file"),
    "NaN learning rate": Case("train_mlp.py", ("--lr=nan", "--out={out}"),
                              ("lr > 0",), before="file"),
    "training data directory without files": Case(
        "train_mlp.py", ("--dataset=mnist", "--data_dir={files}/empty", "--out={out}"),
        ("no MNIST files in",), before="file"),
    "ablating an interrupted build": Case("ablate.py", ("--graph_dir={out}",),
                                          ("incomplete", "rerun the same"), before="interrupted"),
    "ablating with zero samples": Case("ablate.py", ("--graph_dir={out}", "--n_samples=0"),
                                       ("--n_samples must be >= 1",)),
    "ablating with a zero batch": Case("ablate.py", ("--graph_dir={out}", "--batch_size=0"),
                                       ("--batch_size must be >= 1",)),
    "plotting a directory without a build": Case("plot_graph.py", ("--graph_dir={out}",),
                                                 ("holds no libjax build",), before=NONE),
    "plotting no edges": Case("plot_graph.py", ("--graph_dir={out}", "--n_edges=0"),
                              ("--n_edges and --max_nodes must be >= 1",)),
    "plotting edge masks from a binary file": Case(
        "plot_graph.py", ("--graph_dir={out}", "--edge_results={files}/modadd.npz"),
        ("cannot read edge masks",)),
}


# --- the files the cases point at -----------------------------------------------------------------

def _modadd_variants(files: Path) -> None:
    weights, meta = checkpoints.load_npz(modadd.DEFAULT_CHECKPOINT)
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    raw = modadd.DEFAULT_CHECKPOINT.read_bytes()
    (files / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    (files / "garbage.npz").write_bytes(b"not a checkpoint\n" * 64)
    np.save(files / "array.npy", w64["embed.W_E"])
    variants = {
        "modadd": {},
        "narrow": {"blocks.0.mlp.W_in": w64["blocks.0.mlp.W_in"][:, :256]},
        "no_bias": {"unembed.b_U": None},
        "extra": {"blocks.1.mlp.W_in": w64["blocks.0.mlp.W_in"]},
        "nan": {"unembed.W_U": np.where(np.eye(*w64["unembed.W_U"].shape) > 0, np.nan,
                                        w64["unembed.W_U"])},
        "huge": {"embed.W_E": w64["embed.W_E"] * 1e155},  # finite, but squares overflow
        "f32_overflow": {"embed.W_E": w64["embed.W_E"] * 1e30},  # fine in float64 only
    }
    for name, changes in variants.items():
        w = {k: v for k, v in {**w64, **changes}.items() if v is not None}
        checkpoints.save_npz(files / f"{name}.npz", w, **meta)


def _mlp_variants(files: Path) -> None:
    cfg, weights, meta = mlp.load()
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    scaled = {"mlp_gram": {"layers.0.W": 1e155, "layers.0.b": 1e155},  # layer-1 Grams overflow
              "mlp_m_prime": {"layers.2.W": 1e160}}  # M' of layers.2 overflows, Grams do not
    for name, factors in scaled.items():
        mlp.save(files / f"{name}.npz", {k: v * factors.get(k, 1.0) for k, v in w64.items()},
                 cfg, dataset="digits")
    mnist = mlp.MLPConfig((784, 8, 10))
    rng = np.random.default_rng(0)
    mlp.save(files / "mnist_mlp.npz", {k: rng.normal(size=s) for k, s in
                                       mlp.expected_shapes(mnist).items()}, mnist, dataset="mnist")


def _corpora(files: Path) -> None:
    hf_tiny.gpt2_numpy(files / "gpt2")  # vocabulary 64, context 16
    for name, tokens in {"big_ids": np.arange(100), "short": np.arange(40) % 64}.items():
        (files / name).mkdir()
        np.save(files / name / "tokens.npy", tokens)
    (files / "empty").mkdir()
    (files / "empty" / "README.md").write_text("no data here\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    files = tmp_path_factory.mktemp("files")
    _modadd_variants(files)
    _mlp_variants(files)
    _corpora(files)
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory, files) -> Path:
    """A finished build of the shipped model on 10 samples (what the cases' commands would
    build, were their input good)."""
    out = tmp_path_factory.mktemp("finished") / "graph"
    result = run_script("compute_basis.py", "--n_samples=10", f"--checkpoint={files}/modadd.npz",
                        f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    return out


def _prepare(before: str, out: Path, finished: Path) -> None:
    if before in ("build", "interrupted"):
        shutil.copytree(finished, out)
        if before == "interrupted":
            (out / "summary.json").unlink()
    elif before == "file":
        out.write_bytes(b"a file that must survive\n")


def _message(stderr: str, status: int) -> str:
    """The user-facing message: libjax's ``error:`` line, or absl's flag error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if status == 1:
        assert lines[0].startswith("FATAL Flags parsing error"), stderr
        return "\n".join(lines)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


# Variants of a default case (another flag of the same check, another script, another model
# family), run with -m slow to keep the default run near a minute.
VARIANTS = {
    "one node layer", "MLP node layers not consecutive", "GPT-2 block that does not exist",
    "GPT-2 blocks that do not exist", "a range that goes down", "a block listed twice",
    "several blocks with node layers", "several blocks of a one-graph model",
    "single array, not an archive", "checkpoint is a directory", "weight the model does not use",
    "MLP given a transformer", "HF directory without config", "negative samples",
    "zero Gram samples", "data option the model ignores", "data directory that does not exist",
    "images of the wrong size", "token ids outside the vocabulary",
    "corpus smaller than the samples", "context longer than the model's",
    "negative edge batch size", "unknown basis", "negative intervals",
    "negative stochastic sources", "position sources without positions",
    "NaN truncation threshold", "zero memory budget",
    "negative seed", "output directory inside a file", "float32 overflow", "training rate zero",
    "zero hidden width", "NaN learning rate", "training data directory without files",
    "plotting a directory without a build", "ablating with zero samples"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in VARIANTS else n
                                  for n in CASES])
def test_bad_input_is_refused_clearly_and_harms_nothing(name, tmp_path, files, finished):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    _prepare(case.before, out, finished)
    before = snapshot(work)
    args = [a.format(out=out, files=files) for a in case.args]
    result = run_script(case.script, *args, max_file_bytes=case.max_file_bytes)
    assert result.returncode == case.status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = _message(result.stderr, case.status)
    for part in case.says:
        assert part in message, (part, message)
    if case.before == NONE:  # whatever the failed build left, it never passes for a finished one
        if (out / "build.json").exists():
            with pytest.raises(StoreError, match="incomplete"):
                graph.load(out)
    else:
        assert snapshot(work) == before


# --- sensible behaviour at the edges, in-process --------------------------------------------------

def test_a_dataset_smaller_than_a_batch_is_one_batch_and_padding_changes_nothing():
    """10 samples with batches of 4096 are one batch of 10; with batches of 4 the last one is
    padded by 2 samples of weight 0. Both give the graph of the same 10 samples."""
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    tokens = tokens[:10]
    one = build(model, tokens, BuildConfig(batch_size=4096))
    padded = build(model, tokens, BuildConfig(batch_size=4))
    for name, b in one.bases.items():
        np.testing.assert_allclose(padded.grams[name], one.grams[name], rtol=1e-12, atol=1e-14)
        big = b.Lambda > 1e-8 * b.Lambda.max()
        np.testing.assert_allclose(padded.bases[name].Lambda[big], b.Lambda[big], rtol=1e-8)
    for pair, e in one.edges.items():
        np.testing.assert_allclose(padded.edges[pair], e, rtol=1e-8, atol=1e-10 * e.max())


def test_weights_changed_under_the_same_name_are_a_different_build(tmp_path):
    """A checkpoint retrained in place (same path, other weights) must not resume the stages of
    the old weights."""
    layers = ("ln1.0", "ln2.0", "unembed", "output")
    model, tokens = tiny_transformer(layers, seed=0)
    build(model, tokens, BuildConfig(compute_edges=False), out_dir=tmp_path, model_id="ckpt.npz")
    retrained, _ = tiny_transformer(layers, seed=1)
    with pytest.raises(StoreError, match=r"differs in: params_sha256\)"):
        build(retrained, tokens, BuildConfig(compute_edges=False), out_dir=tmp_path,
              model_id="ckpt.npz")
