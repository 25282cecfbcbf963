"""Ablations of a finished build as ablate.py runs them (models.ablating): the request over the
model's settings, checked before anything loads; result files read back or refused clearly.
End to end: tests/scripts/test_ablate_scripts.py and tests/ablation/test_lm_ablation.py."""

from __future__ import annotations

import json

import pytest

from libjax import ablation
from libjax.ablation import records
from libjax.errors import ConfigError, DataError
from models import ablating

MODADD = {"split": "test", "metric": "accuracy", "batch_size": 99999,
          "ablate_every_vec_cutoff": 10, "exp_base": 1.05}


def test_the_request_takes_the_models_settings_unless_given():
    schedule, bisect = ablating.Request().plan(MODADD)
    assert schedule == ablation.Schedule("exponential", ablate_every_vec_cutoff=10, exp_base=1.05)
    assert bisect == ablation.Bisect(0.001, "linear", 1)
    schedule, bisect = ablating.Request(schedule="linear", n_points=5, ablate_every_vec_cutoff=None,
                                        score_target_difference=0.01).plan(MODADD)
    assert (schedule.kind, schedule.n_points, schedule.ablate_every_vec_cutoff) == \
        ("linear", 5, None)
    assert bisect.score_target_difference == 0.01


@pytest.mark.parametrize("request_, message", [
    (ablating.Request(ablations=("nodes",)), "--ablations must list node and/or edge"),
    (ablating.Request(ablations=()), "--ablations must list node and/or edge"),
    (ablating.Request(schedule="linear"), "n_points"),
    (ablating.Request(ablations=("edge",), tolerance=0), "tolerance"),
])
def test_a_bad_request_is_refused_before_anything_loads(request_, message):
    with pytest.raises(ConfigError, match=message):
        request_.plan(MODADD)


def test_result_files_are_read_back_or_refused_with_what_to_pass(tmp_path):
    record = ablation.node_record({"ln1.0": {0: 1.0}}, 1.0, {"ablation_type": "node"}, 1.0)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record))
    assert records.read_record(good, "--compare")["results"] == {"ln1.0": {"0": 1.0}}
    other = tmp_path / "other.json"
    other.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"not an ablation result file of ablate.py \(--compare\)"):
        records.read_record(other, "--compare")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="cannot read ablation results"):
        records.read_record(binary, "--compare")
    with pytest.raises(DataError, match="cannot read edge masks .* pass the"):
        records.read_required_masks(good)  # a node record has no edge masks
