"""One node or edge ablation of a graph, timed and written up as a result record (SPEC 3.5).

:mod:`libjax.ablation.evaluator` computes the scores; this module adds what a saved experiment needs
around them: its full configuration (the caller's fields plus the ablation type, the layers and
the schedule, so a record says how it was made) and the wall-clock and CPU time it took.
``scripts/ablate.py`` and :mod:`libjax.analysis.comparison` both write their records through it, so
records from either read the same way (``plots.ablation_curves``, ``--compare``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from libjax.ablation import evaluator as ablation
from libjax.storage.graph import Graph


def node_config(common: dict, layers: Sequence[str], schedule: ablation.Schedule,
                basis: str) -> dict:
    """The configuration of a node ablation in ``basis`` of ``layers``: ``common`` plus the
    ablation type (the basis), the layers and the schedule."""
    return dict(common, ablation_type=basis, node_layers=list(layers),
                schedule=dataclasses.asdict(schedule))


def edge_config(common: dict, pairs: Sequence[tuple[str, str]], bisect: ablation.Bisect) -> dict:
    """The configuration of an edge ablation of ``pairs``: ``common`` plus the ablation type,
    the input layers, the pairs and the bisection."""
    return dict(common, ablation_type="edge", node_layers=[a for a, _ in pairs],
                pairs=[f"{a}->{b}" for a, b in pairs],
                schedule={"schedule_type": "bisect", **dataclasses.asdict(bisect)})


def node_experiment(ev: ablation.Evaluator, graph: Graph, layers: Sequence[str],
                    schedule: ablation.Schedule, basis: str, common: dict) -> dict:
    """Node ablation of each of ``layers`` (one at a time) as a timed result record."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = ablation.node_ablation(ev, graph, layers, schedule, basis)
    return ablation.node_record(results, ev.base(), node_config(common, layers, schedule, basis),
                                time.perf_counter() - t0, time.process_time() - c0)


def edge_experiment(ev: ablation.Evaluator, graph: Graph, pairs: Sequence[tuple[str, str]],
                    bisect: ablation.Bisect, common: dict) -> dict:
    """Edge ablation (bisection for the edges required) of each of ``pairs`` as a timed result
    record."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = ablation.edge_ablation(ev, graph, pairs, bisect)
    return ablation.edge_record(results, ev.base(), edge_config(common, pairs, bisect),
                                time.perf_counter() - t0, time.process_time() - c0)
