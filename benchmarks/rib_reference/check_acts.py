"""Compare rib's node-layer activations and logits with libjax's (from libjax_acts.py).

    PYTHONPATH=/work/ref/rib:/work/ref/stubs /work/ref/.venv/bin/python /work/ref/check_acts.py \
        /work/ref/tiny_pythia /work/ref/libjax_acts_L0.npz

Prints, per node layer, the widths and the max absolute difference (and the max |activation|),
for rib in float64 and in float32.
"""

import sys

import numpy as np
import torch
from rib_local import load_model, node_layer_acts


def main(ckpt, npz):
    ref = np.load(npz)
    node_layers = [str(n) for n in ref["node_layers"]]
    tokens = torch.from_numpy(ref["tokens"].astype(np.int64))
    for dtype in (torch.float64, torch.float32):
        model = load_model(ckpt, node_layers, dtype)
        acts, logits = node_layer_acts(model, tokens)
        print(f"rib {dtype}:")
        for name, a in zip(node_layers, acts):
            ours = ref[f"acts_{name}"]
            a = a.double().numpy()
            shape = "same shape" if a.shape == ours.shape else f"SHAPES {a.shape} vs {ours.shape}"
            diff = np.abs(a - ours).max() if a.shape == ours.shape else float("nan")
            print(f"  {name:10s} width {a.shape[-1]:4d} {shape}  max|diff| {diff:.3e}  "
                  f"max|act| {np.abs(ours).max():.3e}")
        d = np.abs(logits.double().numpy() - ref["logits"]).max()
        print(f"  logits     max|diff| {d:.3e}  max|logit| {np.abs(ref['logits']).max():.3e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
