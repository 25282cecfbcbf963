"""Run the authors' ablations (rib @ 7a6199f, unmodified) on a libjax graph of a local GPT-NeoX.

    cd /work/ref && PYTHONPATH=/work/ref/rib:/work/ref/stubs:/work/ref \
      /work/ref/.venv/bin/python run_rib_ablation.py --checkpoint=/work/ref/tiny_pythia \
        --graph=/work/ref/graphs/lib_L0.npz --tokens=/work/ref/corpus_eval/eval.npy --n_ctx=32 \
        --batch_size=16 --ablation_type=rib --n_points=20 --out=OUT.json

What is the authors' code, called as their ``load_bases_and_ablate`` calls it:
  * the evaluation set: ``rib.loader.prepare_dataset`` on the pre-tokenised stream (one document
    holding every token, so no EOS is added), ``n_samples=None``: chunks of n_ctx, the last raw
    chunk dropped, each chunk's last label the next chunk's first token;
  * the model: ``rib.loader.load_sequential_transformer`` (TransformerLens processing, fold_bias),
    with the node layers as sections; only TransformerLens's hub look-ups are patched
    (``rib_local``);
  * the bases: ``rib.ablations.load_basis_matrices`` on rib ``InteractionRotation``s built from the
    graph's C, C_pinv, W, W_pinv (``rib`` -> C, ``orthogonal`` -> W, ``edge`` -> C);
  * the edges: rib ``Edges`` holding the graph's edge matrices as ``E_hat``;
  * ``ablate_node_layers_and_eval`` / ``ablate_edges_and_eval`` with ``eval_cross_entropy_loss``,
    ``always_keep_const_dir`` = the build's ``center``.
Writes the JSON that ``load_bases_and_ablate`` writes (config, results, no_ablation_result,
n_edges_required and edge_masks for edges) plus ``n_eval_samples``.
"""

import argparse
import json
import time

import numpy as np
import torch
from datasets import Dataset as HFDataset
from rib.ablations import (
    BisectScheduleConfig,
    ExponentialScheduleConfig,
    LinearScheduleConfig,
    ablate_edges_and_eval,
    ablate_node_layers_and_eval,
    load_basis_matrices,
)
from rib.data_accumulator import Edges
from rib.hook_manager import HookedModel
from rib.interaction_algos import InteractionRotation
from rib.loader import prepare_dataset
from rib.types import TORCH_DTYPES
from rib.utils import eval_cross_entropy_loss, set_seed
from rib_local import load_model  # patches TransformerLens's hub look-ups first
from torch.utils.data import DataLoader


class _TokenStream:
    """What prepare_dataset needs of a tokenizer for a pre-tokenised dataset: an EOS id (it is
    asserted, not used)."""
    eos_token_id = 0


def eval_dataset(tokens: np.ndarray, n_ctx: int):
    stream = HFDataset.from_dict({"input_ids": [tokens.astype(np.int64).tolist()]})
    return prepare_dataset(stream, _TokenStream(), n_ctx=n_ctx, n_samples=None)


def rotations(graph, node_layers):
    out = []
    for name in node_layers:
        t = {k: torch.from_numpy(graph[f"{k}__{name}"]) for k in ("C", "C_pinv", "W", "W_pinv")
             if f"{k}__{name}" in graph}
        out.append(InteractionRotation(node_layer=name, orig_dim=int(graph[f"orig__{name}"]),
                                       **t))
    return out


def schedule(args):
    if args.ablation_type == "edge":
        return BisectScheduleConfig(schedule_type="bisect",
                                    score_target_difference=args.score_target_difference,
                                    scaling=args.scaling, tolerance=args.tolerance)
    common = dict(early_stopping_threshold=args.early_stopping_threshold,
                  specific_points=args.specific_points)
    if args.schedule == "linear":
        return LinearScheduleConfig(schedule_type="linear", n_points=args.n_points, **common)
    return ExponentialScheduleConfig(schedule_type="exponential",
                                     ablate_every_vec_cutoff=args.ablate_every_vec_cutoff,
                                     exp_base=args.exp_base, **common)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--graph", required=True, help=".npz written by export_graph.py")
    p.add_argument("--tokens", required=True, help=".npy of int token ids (1-D)")
    p.add_argument("--n_ctx", type=int, required=True)
    p.add_argument("--batch_size", type=int, default=30)
    p.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPES))
    p.add_argument("--ablation_type", default="rib", choices=("rib", "orthogonal", "edge"))
    p.add_argument("--node_layers", default=None,
                   help="comma-separated ablation node layers (default: all the graph's)")
    p.add_argument("--schedule", default="linear", choices=("linear", "exponential"))
    p.add_argument("--n_points", type=int, default=20)
    p.add_argument("--ablate_every_vec_cutoff", type=int, default=None)
    p.add_argument("--exp_base", type=float, default=2.0)
    p.add_argument("--early_stopping_threshold", type=float, default=None)
    p.add_argument("--specific_points", default=None,
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--score_target_difference", type=float, default=0.05)
    p.add_argument("--scaling", default="linear", choices=("linear", "logarithmic"))
    p.add_argument("--tolerance", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    start = time.time()
    set_seed(args.seed)
    graph = dict(np.load(args.graph))
    config = json.loads(str(graph["config_json"]))
    node_layers = (args.node_layers.split(",") if args.node_layers
                   else [str(n) for n in graph["node_layers"]])
    dtype = TORCH_DTYPES[args.dtype]
    device = "cpu"

    info = type("Results", (), {"interaction_rotations": rotations(graph, node_layers)})
    basis_matrices = load_basis_matrices(rib_results=info, ablation_node_layers=node_layers,
                                         ablation_type=args.ablation_type, dtype=dtype,
                                         device=device)
    model = load_model(args.checkpoint, node_layers, dtype)
    model.to(device=torch.device(device), dtype=dtype)
    dataset = eval_dataset(np.load(args.tokens), args.n_ctx)
    data_loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    hooked_model = HookedModel(model)
    no_ablation_result = eval_cross_entropy_loss(hooked_model, data_loader, dtype=dtype,
                                                 device=device)
    print(f"{len(dataset)} evaluation chunks; no-ablation ce_loss {no_ablation_result:.9g}")
    module_names = [f"sections.{sec}" for sec in model.sections if sec != "pre"]

    results = {"config": {**vars(args), "schedule_config": schedule(args).model_dump(),
                          "center": config.get("center")}}
    if args.ablation_type == "edge":
        edges = [Edges(in_node_layer=a, out_node_layer=b,
                       E_hat=torch.from_numpy(graph[f"E__{a}__{b}"]))
                 for a, b in zip(node_layers[:-1], node_layers[1:])]
        ablation_results, edge_masks, n_edges_required = ablate_edges_and_eval(
            basis_matrices=basis_matrices, ablation_node_layers=node_layers, edges=edges,
            hooked_model=hooked_model, data_loader=data_loader,
            eval_fn=eval_cross_entropy_loss, eval_type="ce_loss", module_names=module_names,
            schedule_config=schedule(args), device=device, dtype=dtype,
            always_keep_const_dir=bool(config.get("center")), return_all_edge_masks=False)
        results.update(n_edges_required=n_edges_required, edge_masks=edge_masks)
    else:
        ablation_results = ablate_node_layers_and_eval(
            basis_matrices=basis_matrices, ablation_node_layers=node_layers,
            hooked_model=hooked_model, data_loader=data_loader,
            eval_fn=eval_cross_entropy_loss, eval_type="ce_loss", module_names=module_names,
            schedule_config=schedule(args), device=device, dtype=dtype)
    results.update(results=ablation_results, no_ablation_result=no_ablation_result,
                   n_eval_samples=len(dataset),
                   time_taken=f"{(time.time() - start) / 60:.1f} minutes")
    with open(args.out, "w") as f:
        json.dump(results, f, default=lambda x: x.tolist(), indent=1)
    if args.ablation_type == "edge":
        print("n_edges_required", n_edges_required)
    print(f"wrote {args.out} ({results['time_taken']})")


if __name__ == "__main__":
    main()
