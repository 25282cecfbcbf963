"""Tabulate libjax's ablation results against the authors' (harness) on the same graph and data.

    python3 /work/ref/compare.py LIBJAX.json RIB.json

Node results: for every layer and every number of directions kept that both report, the two
losses and their relative difference; the largest per layer, and the points only one side has.
Edge results: the edges required per transition and their relative difference.
"""

import json
import sys


def main(ours_path, theirs_path):
    ours, theirs = json.load(open(ours_path)), json.load(open(theirs_path))
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    print(f"no-ablation loss: libjax {ours['no_ablation_result']:.9g}  rib "
          f"{theirs['no_ablation_result']:.9g}  "
          f"rel {rel(ours['no_ablation_result'], theirs['no_ablation_result']):.2e}")
    worst = 0.0
    if "n_edges_required" in theirs:
        print(f"{'transition':24s} {'libjax':>8s} {'rib':>8s} {'rel':>8s}")
        for layer, n in theirs["n_edges_required"].items():
            o = ours.get("n_edges_required", {}).get(layer)
            r = "" if o is None else f"{abs(o - n) / n:8.3f}"
            print(f"{layer:24s} {str(o):>8s} {n:8d} {r}")
    for layer, points in theirs["results"].items():
        mine = ours["results"].get(layer, {})
        common = [k for k in points if k in mine]
        diffs = [rel(mine[k], points[k]) for k in common]
        worst = max([worst] + [d for k, d in zip(common, diffs) if k != "0"])
        only_rib = [k for k in points if k not in mine]
        only_ours = [k for k in mine if k not in points]
        top = max(diffs) if diffs else float("nan")
        print(f"{layer:12s} {len(common):3d} common points, max rel diff {top:.2e}"
              + (f"; only rib: {only_rib}" if only_rib else "")
              + (f"; only libjax: {only_ours}" if only_ours else ""))
        for k in common:
            if rel(mine[k], points[k]) > 1e-6:
                print(f"    {k:>6s}: libjax {mine[k]:.9g}  rib {points[k]:.9g}  "
                      f"rel {rel(mine[k], points[k]):.2e}")
    print(f"largest relative difference of a loss, 0 directions kept excluded: {worst:.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
