"""warm_or_scratch: small drift on a stable catalogue continues from the champion; anything bigger retrains.

Each branch is one test; every decision says why, with the value and the threshold.
"""

from __future__ import annotations

import pytest

from recsys_retrain.schedule.calibrate import calibrate
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.start import ChampionInfo, StartDecision, warm_or_scratch
from recsys_retrain.settings import ScheduleSettings, TrainSettings

ON = ScheduleSettings(warm_start=True)
CALM = {"severity": "none", "drifted_share": 0.0}
MINOR = {"severity": "minor", "drifted_share": 0.2}
MAJOR = {"severity": "major", "drifted_share": 0.6}
PROFILE = {"interactions": 80_000, "users": 900, "items": 1600, "density": 0.055, "gini": 0.6,
           "interactions_per_day": 80_000 / 140}  # a 140-day window
STABLE = ChampionInfo(new_user_share=0.05, new_item_share=0.01, removed_item_share=0.0, embedding_dim=32,
                      days_unseen=7.0, version="4")


def with_champion(**changes) -> ChampionInfo:
    return ChampionInfo(**{**STABLE.to_dict(), **changes})


class TestFromScratch:
    def test_by_default_every_run_trains_from_scratch_until_a_backtest_chooses(self):
        assert ScheduleSettings().warm_start is False
        decision = warm_or_scratch(CALM, PROFILE, STABLE)
        assert not decision.warm and "backtest" in decision.why and "schedule.warm_start" in decision.why

    def test_without_a_champion_or_a_drift_verdict(self):
        assert "no champion" in warm_or_scratch(CALM, PROFILE, None, ON).why
        assert "no drift verdict" in warm_or_scratch(None, PROFILE, STABLE, ON).why

    def test_major_drift(self):
        decision = warm_or_scratch(MAJOR, PROFILE, STABLE, ON)
        assert not decision.warm and decision.why.startswith("drift major (share 0.60)")

    def test_too_many_new_users(self):
        decision = warm_or_scratch(CALM, PROFILE, with_champion(new_user_share=0.35), ON)
        assert not decision.warm and "35.0% of the span's users are new to the champion (version 4) (over 20%)" in decision.why
        assert warm_or_scratch(CALM, PROFILE, with_champion(new_user_share=0.35),
                               ScheduleSettings(warm_start=True, warm_max_new_users=0.4)).warm

    def test_a_changed_catalogue_counts_added_and_removed_items(self):
        added = warm_or_scratch(CALM, PROFILE, with_champion(new_item_share=0.12), ON)
        assert not added.warm and "12.0% new items, 0.0% removed (over 10% together)" in added.why
        both = warm_or_scratch(CALM, PROFILE, with_champion(new_item_share=0.06, removed_item_share=0.06), ON)
        assert not both.warm and "catalogue changed" in both.why

    def test_a_champion_of_another_embedding_width(self):
        decision = warm_or_scratch(CALM, PROFILE, STABLE, ON, TrainSettings(embedding_dim=64))
        assert not decision.warm and "32 wide, this run's 64" in decision.why

    def test_every_failed_condition_is_a_reason(self):
        decision = warm_or_scratch(MAJOR, PROFILE, with_champion(new_user_share=0.5, new_item_share=0.5), ON)
        assert len(decision.reasons) == 3

    def test_the_plan_records_why_and_is_otherwise_unchanged(self):
        plan = SchedulePlan(probe_rates=(1.0, 2.0))
        decided = warm_or_scratch(MAJOR, PROFILE, STABLE, ON).apply(plan)
        assert decided.warm_start is False and "drift major" in decided.why("warm_start")
        assert decided.to_dict() | {"reasons": []} == plan.to_dict() | {"reasons": []}


class TestWarm:
    def test_no_drift_and_a_stable_catalogue_get_a_short_update_at_a_lower_rate(self):
        decision = warm_or_scratch(CALM, PROFILE, STABLE, ON)
        assert decision.warm and decision.rate_scale == ON.warm_rate_scale == 0.25
        assert decision.epochs == ON.warm_epochs == 2
        assert decision.history_days == ON.warm_span_days == 28
        assert "continue from the champion (version 4)" in decision.why
        assert "the last 28 days (warm_span_days), about 16,000 interactions" in decision.why

    def test_minor_drift_gets_a_higher_rate_and_more_epochs_than_none(self):
        calm, minor = warm_or_scratch(CALM, PROFILE, STABLE, ON), warm_or_scratch(MINOR, PROFILE, STABLE, ON)
        assert minor.warm and minor.rate_scale == pytest.approx(0.25 * 1.5) and minor.epochs == 3
        assert minor.rate_scale > calm.rate_scale and minor.epochs > calm.epochs
        assert "x1.5 for the drift level" in minor.why

    def test_the_budget_stays_within_the_train_sections_cap(self):
        assert warm_or_scratch(MINOR, PROFILE, STABLE, ON, TrainSettings(epochs=2)).epochs == 2

    def test_the_span_covers_every_day_the_champion_has_not_seen(self):
        decision = warm_or_scratch(CALM, PROFILE, with_champion(days_unseen=45.0), ON)
        assert decision.history_days == 45 and "every day since the champion's training data ended" in decision.why

    def test_a_window_no_longer_than_the_span_is_used_whole(self):
        short = {**PROFILE, "interactions_per_day": 80_000 / 20}  # a 20-day window
        decision = warm_or_scratch(CALM, short, STABLE, ON)
        assert decision.warm and decision.history_days is None and "the whole 20-day window" in decision.why

    def test_the_plan_gets_the_scaled_rates_budget_and_span_each_with_its_reason(self):
        plan = SchedulePlan(dense_lr=0.02, sparse_lr=0.08, max_epochs=12, min_epochs=3, probe_rates=(1.0, 2.0, 4.0))
        warm = warm_or_scratch(CALM, PROFILE, STABLE, ON).apply(plan)
        assert warm.warm_start is True and warm.history_days == 28
        assert warm.dense_lr == pytest.approx(0.005) and warm.sparse_lr == pytest.approx(0.02)
        assert (warm.max_epochs, warm.min_epochs, warm.probe_rates) == (2, 2, ())
        for name in ("warm_start", "dense_lr", "sparse_lr", "max_epochs", "probe_rates", "history_days"):
            assert warm.why(name).startswith(("drift none", "warm start")), name
        assert SchedulePlan.from_dict(warm.to_dict()) == warm

    def test_the_decision_round_trips_through_a_dict(self):
        decision = warm_or_scratch(MINOR, PROFILE, STABLE, ON)
        assert StartDecision.from_dict(decision.to_dict()) == decision
        assert ChampionInfo.from_dict(STABLE.to_dict()) == STABLE


def test_champion_info_measures_new_and_removed_ids_against_the_champion():
    info = ChampionInfo.compare(range(1, 101), range(1000, 1100), range(51, 151), range(1010, 1120), embedding_dim=16)
    assert info.new_user_share == pytest.approx(0.5)
    assert info.new_item_share == pytest.approx(20 / 110) and info.removed_item_share == pytest.approx(0.1)


class TestCalibrate:
    def test_without_a_champion_the_plan_is_as_before(self):
        plan = calibrate(PROFILE, CALM, settings=ON)
        assert plan.warm_start is False and plan.why("warm_start") is None and plan.history_days is None

    def test_with_a_champion_calibrate_records_the_start_decision(self):
        scratch = calibrate(PROFILE, CALM, champion=STABLE)  # warm starts off: from scratch, and why
        assert scratch.warm_start is False and "backtest" in scratch.why("warm_start")
        assert scratch.to_dict() | {"reasons": []} == calibrate(PROFILE, CALM).to_dict() | {"reasons": []}
        rules = calibrate(PROFILE, CALM, settings=ON)
        warm = calibrate(PROFILE, CALM, settings=ON, champion=STABLE)
        assert warm.warm_start and warm.max_epochs == 2 and warm.probe_rates == ()
        assert warm.sparse_lr == pytest.approx(rules.sparse_lr * 0.25)
        assert not calibrate(PROFILE, MAJOR, settings=ON, champion=STABLE).warm_start
