"""Node and edge ablations of an interaction graph (docs/method.md 3): how much of a model do a
graph's directions and edges keep?

* **node ablation** (3.1): at one node layer at a time, the activations are rotated into the
  basis, the least important directions are zeroed (mean-ablated, since coordinates are centred),
  and rotated back: ``x <- x C_abl C^+``. The score is tracked as directions are removed.
* **edge ablation** (3.3): between one pair of consecutive node layers only the ``K`` strongest
  edges are kept; output node ``o`` is computed from the input nodes its row of the edge mask
  keeps. A bisection finds the smallest ``K`` that keeps the score within ``Delta``.

Everything sees only a :class:`~libjax.model.SectionedModel` and a
:class:`~libjax.storage.graph.Graph`. The parts: :mod:`.schedules` (which points),
:mod:`.masks` (rotations and edge masks), :mod:`.metrics`, :mod:`.evaluator` (the model under
an intervention), :mod:`.experiments` (the ablations and their timed records) and
:mod:`.records` (the JSON format). The names below are the package's public interface.
"""

from libjax.ablation.edge_forward import EdgeForward
from libjax.ablation.evaluator import Evaluator
from libjax.ablation.experiments import (
                                         NODE_BASES,
                                         edge_ablation,
                                         edge_experiment,
                                         edge_scorer,
                                         node_ablation,
                                         node_experiment,
)
from libjax.ablation.masks import edge_mask, group_rows, rotation_matrix
from libjax.ablation.metrics import METRICS, combine, is_good
from libjax.ablation.records import EdgeResult, edge_record, node_record, required_masks
from libjax.ablation.schedules import (
                                         MODEL_DEFAULT,
                                         Bisect,
                                         Schedule,
                                         bisect,
                                         exponential_schedule,
                                         linear_schedule,
                                         schedule_for,
                                         with_specific_points,
)

__all__ = ["EdgeForward", "Evaluator", "NODE_BASES", "edge_ablation", "edge_experiment",
           "edge_scorer",
           "node_ablation", "node_experiment", "edge_mask", "group_rows", "rotation_matrix",
           "METRICS", "combine", "is_good", "EdgeResult", "edge_record", "node_record",
           "required_masks", "MODEL_DEFAULT", "Bisect", "Schedule", "bisect",
           "exponential_schedule", "linear_schedule", "schedule_for", "with_specific_points"]
