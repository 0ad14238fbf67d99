"""calibrate: the rules move the plan in the documented direction, each with its reason; past runs win over rules."""

from __future__ import annotations

import pytest

from recsys_retrain.schedule.calibrate import calibrate
from recsys_retrain.schedule.knowledge import KnowledgeBase, Record, features
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import ScheduleSettings, TrainSettings

DENSE = {"interactions": 80_000, "users": 900, "items": 1600, "density": 0.055, "gini": 0.6, "long_tail_share": 0.6}
SPARSE = {**DENSE, "interactions": 20_000, "density": 0.014}


def test_every_data_dependent_field_has_a_reason():
    plan = calibrate(DENSE)
    assert plan.source == "rules"
    for name in ("dense_lr", "sparse_lr", "decay_floor", "max_epochs", "warmup_steps", "weight_decay", "beta1"):
        assert plan.why(name), f"no reason for {name}"
        assert getattr(plan, name) == next(r.value for r in plan.reasons if r.field == name)


def test_sparser_data_gets_a_gentler_decay_and_more_epochs_at_the_same_embedding_rate():
    dense, sparse = calibrate(DENSE), calibrate(SPARSE)
    assert sparse.decay_floor > dense.decay_floor
    assert sparse.max_epochs >= dense.max_epochs
    assert sparse.sparse_lr == dense.sparse_lr == TrainSettings().sparse_lr  # row-wise Adagrad adapts per row
    assert "Adagrad" in sparse.why("sparse_lr")


def test_the_controller_steers_by_the_configured_validation_cut_off():
    assert calibrate(DENSE).validation_k == ScheduleSettings().validation_k == 50
    plan = calibrate(DENSE, settings=ScheduleSettings(validation_k=20))
    assert plan.validation_k == 20 and "NDCG@20" in plan.why("validation_k")
    with pytest.raises(ValueError, match="validation_k"):
        SchedulePlan(validation_k=0)


def test_drift_makes_the_decay_gentler_and_the_controller_more_patient():
    calm = calibrate(DENSE, {"severity": "none", "drifted_share": 0.0})
    drifted = calibrate(DENSE, {"severity": "major", "drifted_share": 0.6})
    assert drifted.decay_floor > calm.decay_floor
    assert drifted.patience == calm.patience + 1
    assert "drift major" in drifted.why("patience")


def test_with_a_drift_half_life_stronger_drift_weights_recent_interactions_more():
    dated = {**DENSE, "interactions_per_day": 80_000 / 140}  # a 140-day window
    weighting = ScheduleSettings(drift_half_life=0.1)
    assert calibrate(dated, {"severity": "none", "drifted_share": 0.0}, settings=weighting).recency_half_life is None
    minor = calibrate(dated, {"severity": "minor", "drifted_share": 0.2}, settings=weighting)
    major = calibrate(dated, {"severity": "major", "drifted_share": 0.6}, settings=weighting)
    assert minor.recency_half_life == pytest.approx(140 * 0.1 / 0.5)
    assert major.recency_half_life == pytest.approx(140 * 0.1 / 1.0)
    assert major.recency_half_life < minor.recency_half_life
    assert "140-day window" in major.why("recency_half_life")
    assert calibrate(dated, {"severity": "major", "drifted_share": 0.6}).recency_half_life is None  # off by default
    assert calibrate(dated, train=TrainSettings(recency_half_life=30.0)).recency_half_life == 30.0  # the train section's
    with pytest.raises(ValueError, match="recency_half_life"):
        SchedulePlan(recency_half_life=0.0)


def test_dense_trending_data_starts_with_a_higher_dense_rate_when_a_trend_boost_is_set():
    boosted = ScheduleSettings(trend_boost=1.5)
    flat = calibrate({**DENSE, "gini": 0.2}, settings=boosted)
    assert calibrate(DENSE, settings=boosted).dense_lr == pytest.approx(1.5 * flat.dense_lr)
    assert "trend boost 1.5" in calibrate(DENSE, settings=boosted).why("dense_lr")
    assert calibrate(DENSE).dense_lr == flat.dense_lr  # default: the rate probe sets the level


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
    assert plan.max_epochs == 6  # 1.5 x best epoch 4, plus one, less the narrow probe's extra pass
    assert plan.probe_rates == (1.0, 2.0) and "1 extra pass" in plan.why("max_epochs")
    assert "past" in plan.why("dense_lr")


def test_a_warm_start_without_a_probe_spends_the_whole_budget_at_the_suggested_rate():
    kb = KnowledgeBase([Record(features(DENSE), 0.004, 0.03, best_epoch=4, epochs=6, validation=0.2, regime="past")])
    plan = calibrate(DENSE, history=kb, settings=ScheduleSettings(kb_probe_rates=[]))
    assert plan.probe_rates == () and plan.max_epochs == 7 and "no probe" in plan.why("probe_rates")


def test_an_empty_knowledge_base_falls_back_to_the_rules():
    assert calibrate(DENSE, history=KnowledgeBase()) == calibrate(DENSE)


def test_plan_round_trips_through_a_dict():
    plan = calibrate(SPARSE, {"severity": "minor", "drifted_share": 0.2}, settings=ScheduleSettings(decay="linear"))
    assert SchedulePlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="decay must be one of"):
        SchedulePlan(decay="exponential")
