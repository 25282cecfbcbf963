#!/usr/bin/env bash
# One prepared accelerator run (issue 26): platform, edge bisections in forward passes, the
# modular-addition build against the CPU's graph, GPT-2-small block 6 at context 1024, the Grams of
# every block, SmolLM2 where carried, and the projected paper build, each part under its own time
# limit, all within ~9 minutes on one GPU.
# From the repository root, on the machine's own Python (no install step):
#   bash benchmarks/accelerator.sh                   # writes accelerator.json/.md to $OUT
#   bash benchmarks/accelerator.sh --out_dir=DIR     # or to DIR
#   bash benchmarks/accelerator.sh --dry_run         # tiny sizes on the CPU, seconds
# PYTHON picks the interpreter (default: python, else python3). See benchmarks/accelerator.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$(command -v python || command -v python3)}" benchmarks/accelerator.py "$@"
