"""libjax's node-layer activations and logits for the first chunks of a token file (float64).

Run with /work/main/.venv/bin/python from /work/main:

    python /work/ref/libjax_acts.py CKPT TOKENS.npy N_CTX N_CHUNKS LAYER OUT.npz

OUT.npz: ``tokens`` (N_CHUNKS, N_CTX), ``acts_<node layer>`` (N_CHUNKS, N_CTX, width), ``logits``.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from models import registry  # noqa: E402
from models.family import Options  # noqa: E402


def main(ckpt, tokens, n_ctx, n_chunks, layer, out):
    n_ctx, n_chunks, layer = int(n_ctx), int(n_chunks), int(layer)
    fam = registry.get("pythia")
    opts = Options(checkpoint=ckpt, n_ctx=n_ctx, layer=layer, dtype="float64")
    node_layers = fam.node_layers(opts)
    model = fam.load(opts, node_layers)
    toks = np.load(tokens)[: n_chunks * n_ctx].reshape(n_chunks, n_ctx).astype(np.int32)
    acts = jax.jit(jax.vmap(lambda x: model.all_acts(model.params, x)))(toks)
    logits = jax.jit(jax.vmap(lambda x: model.forward(model.params, x)))(toks)
    arrays = {f"acts_{n}": np.asarray(a) for n, a in zip(node_layers, acts)}
    np.savez(out, tokens=toks, logits=np.asarray(logits), node_layers=np.asarray(node_layers),
             **arrays)
    print("node layers", node_layers, "widths", [a.shape[-1] for a in arrays.values()])


if __name__ == "__main__":
    main(*sys.argv[1:])
