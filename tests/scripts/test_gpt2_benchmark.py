"""Slow: one block of a GPT-2-small-sized model (random weights) at context 128 builds within
24 GB. Memory must be bounded by the probe chunk and the batch, not by d_model x positions.

Runs ``scripts/compute_basis.py --model=gpt2 --layer=6`` on the benchmark tokens of
``../shared/data/gpt2_bench_tokens.npy`` (2 samples for the bases and edges, 8 for the Grams) and
prints the time per sample and the peak resident memory of the run.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libjax.storage import graph
from tests.helpers import hf_tiny

ROOT = Path(__file__).resolve().parents[2]
N_SAMPLES = 2
LIMIT_GB = 24


@pytest.mark.slow
def test_gpt2_small_block_fits_in_memory(shared_data, tmp_path):
    ckpt = tmp_path / "gpt2-small-random"
    hf_tiny.gpt2_numpy(ckpt, n_layer=12, n_embd=768, n_head=12, vocab=50257, n_positions=1024,
                       scale=0.02)
    cmd = [sys.executable, "scripts/compute_basis.py", "--model=gpt2", f"--checkpoint={ckpt}",
           f"--data_dir={shared_data / 'gpt2_bench_tokens.npy'}", "--layer=6", "--n_ctx=128",
           f"--n_samples={N_SAMPLES}", "--n_gram_samples=8", f"--out_dir={tmp_path / 'out'}"]
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    g = graph.load(tmp_path / "out")
    print(f"\nGPT-2-small block 6, ctx 128: {seconds:.0f} s in all, "
          f"{(g.timings['bases'] + g.timings['edges']) / N_SAMPLES:.0f} s per sample "
          f"(bases {g.timings['bases'] / N_SAMPLES:.0f} s, edges "
          f"{g.timings['edges'] / N_SAMPLES:.0f} s), peak RSS {peak_gb:.1f} GiB")
    assert peak_gb < LIMIT_GB
