#!/bin/bash
# The authors' ablations on one exported graph: node (rib, orthogonal) and edge.
# usage: run_all_rib.sh GRAPH.npz TAG [extra harness flags]
set -e
cd /work/ref
G=$1; TAG=$2; shift 2
export PYTHONPATH=/work/ref/rib:/work/ref/stubs:/work/ref
COMMON="--checkpoint=/work/ref/tiny_pythia --graph=$G --tokens=/work/ref/corpus_eval/eval.npy --n_ctx=32 --batch_size=16"
for T in rib orthogonal; do
  .venv/bin/python run_rib_ablation.py $COMMON --ablation_type=$T --n_points=20 "$@" --out=results/${TAG}_$T.json 2>&1 | grep -v "Warning\|warn(\|Negative variance\|it/s\]\|s/it\]" | tail -3
done
.venv/bin/python run_rib_ablation.py $COMMON --ablation_type=edge --score_target_difference=0.05 "$@" --out=results/${TAG}_edge.json 2>&1 | grep -v "Warning\|warn(\|Negative variance\|it/s\]\|s/it\]" | tail -8
