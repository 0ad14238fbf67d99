"""calibrate: the rules move the plan in the documented direction, each with its reason; past runs win over rules."""

from __future__ import annotations

import pytest

from pipeline.schedule import KnowledgeBase, Record, SchedulePlan, calibrate
from pipeline.schedule.knowledge import features
from pipeline.settings import ScheduleSettings, TrainSettings

DENSE = {"interactions": 80_000, "users": 900, "items": 1600, "density": 0.055, "gini": 0.6, "long_tail_share": 0.6}
SPARSE = {**DENSE, "interactions": 20_000, "density": 0.014}


def test_every_data_dependent_field_has_a_reason():
    plan = calibrate(DENSE)
    assert plan.source == "rules"
    for name in ("dense_lr", "sparse_lr", "decay_floor", "max_epochs", "warmup_steps"):
        assert plan.why(name), f"no reason for {name}"
        assert getattr(plan, name) == next(r.value for r in plan.reasons if r.field == name)


def test_sparser_data_gets_a_higher_embedding_rate_gentler_decay_and_more_epochs():
    dense, sparse = calibrate(DENSE), calibrate(SPARSE)
    assert sparse.sparse_lr > dense.sparse_lr
    assert sparse.decay_floor > dense.decay_floor
    assert sparse.max_epochs >= dense.max_epochs


def test_drift_makes_the_decay_gentler_and_the_controller_more_patient():
    calm = calibrate(DENSE, {"severity": "none", "drifted_share": 0.0})
    drifted = calibrate(DENSE, {"severity": "major", "drifted_share": 0.6})
    assert drifted.decay_floor > calm.decay_floor
    assert drifted.patience == calm.patience + 1
    assert "drift major" in drifted.why("patience")


def test_dense_trending_data_starts_with_a_higher_dense_rate():
    flat = calibrate({**DENSE, "gini": 0.2})
    assert calibrate(DENSE).dense_lr > flat.dense_lr


def test_epoch_budget_never_exceeds_the_train_sections():
    plan = calibrate({**SPARSE, "interactions": 500}, train=TrainSettings(epochs=7), settings=ScheduleSettings(probe_rates=[]))
    assert plan.max_epochs == 7


def test_the_rate_probes_extra_passes_come_out_of_the_epoch_budget():
    plan = calibrate({**SPARSE, "interactions": 500}, train=TrainSettings(epochs=7))  # four candidates: 3 passes
    assert plan.max_epochs == 5 and "2 extra passes" in plan.why("max_epochs")


def test_similar_past_runs_replace_the_rules_rates_and_budget():
    kb = KnowledgeBase([Record(features(DENSE), 0.004, 0.03, best_epoch=4, epochs=6, validation=0.2, regime="past")])
    plan = calibrate(DENSE, history=kb)
    assert plan.source == "knowledge_base"
    assert (plan.dense_lr, plan.sparse_lr) == pytest.approx((0.004, 0.03))
    assert plan.max_epochs == 7  # 1.5 x best epoch 4, plus one
    assert "past" in plan.why("dense_lr")


def test_an_empty_knowledge_base_falls_back_to_the_rules():
    assert calibrate(DENSE, history=KnowledgeBase()) == calibrate(DENSE)


def test_plan_round_trips_through_a_dict():
    plan = calibrate(SPARSE, {"severity": "minor", "drifted_share": 0.2}, settings=ScheduleSettings(decay="linear"))
    assert SchedulePlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="decay must be one of"):
        SchedulePlan(decay="exponential")
