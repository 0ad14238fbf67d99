"""Spec of recsys_retrain.drift.signals: what each designed signal catches, and when it cannot be tested."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_retrain import simulate as sim
from recsys_retrain.drift.check import check_drift
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, START, assert_no_nan, make_window, signal


class TestWhatEachSignalCatches:
    def test_long_tail_shift_drifts_popularity_signals(self, world, reference):
        current = make_window(world, 3000, seed=4, start=NEXT, long_tail=True)
        report = check_drift(reference, current, None, DriftSettings())
        assert {"item_popularity_decile", "top_items_share"} <= set(report.drifted_signals)
        assert report.severity in {"minor", "major"}, report.reason

    def test_new_items_drift_the_new_and_rising_item_shares(self, world, reference):
        current = make_window(world, 3000, seed=22, start=NEXT)
        catalogue = sim.catalogue(pd.concat([reference, current]))
        influx = sim.inject(current, [sim.new_item_influx(0.05)], seed=0, items=catalogue)
        report = check_drift(reference, influx, None, DriftSettings())
        new = signal(report, "new_item_share")
        assert {"new_item_share", "rising_item_share"} <= set(report.drifted_signals), report.reason
        assert new.value > 0.05 and new.method == "share"  # a share of interactions, read as such
        quiet = signal(check_drift(reference, current, None, DriftSettings()), "new_item_share")
        assert quiet.tested and not quiet.drifted and quiet.value < new.value - 0.04

    def test_an_influx_of_new_users_drifts_new_user_share(self, world, reference):
        current = make_window(world, 3000, seed=23, start=NEXT)
        newcomers = current["user_id"].isin(current["user_id"].drop_duplicates().sample(frac=0.5, random_state=0))
        current.loc[newcomers, "user_id"] += 100_000  # half the week's users never seen before
        report = check_drift(reference, current, None, DriftSettings())
        assert "new_user_share" in report.drifted_signals, report.reason

    def test_fewer_interactions_per_session_drift_user_activity(self, world, reference):
        current = make_window(world, 3000, seed=26, start=NEXT)
        current = current.assign(day=current["timestamp"].dt.floor("D"))
        first = ~current.duplicated(["user_id", "day"])  # keep one row of each session
        report = check_drift(reference, current[first].drop(columns="day"), None, DriftSettings())
        assert "user_activity" in report.drifted_signals, report.reason

    def test_events_lost_at_random_drift_session_pace(self, world, reference):
        current = make_window(world, 3000, seed=27, start=NEXT)
        thinned = current.iloc[::3].reset_index(drop=True)  # two rows in three never logged
        report = check_drift(reference, thinned, None, DriftSettings())
        assert "session_pace" in report.drifted_signals, report.reason
        assert "session_pace" not in check_drift(reference, current, None, DriftSettings()).drifted_signals

    def test_method_overrides_are_checked(self, world, reference):
        current = make_window(world, 2000, seed=16, start=NEXT)
        report = check_drift(reference, current, None, DriftSettings(methods={"rating": "psi"}))
        assert signal(report, "rating").method == "psi"
        with pytest.raises(ValueError, match="categorical"):
            check_drift(reference, current, None, DriftSettings(methods={"genre": "wasserstein"}))
        with pytest.raises(ValueError, match="new_item_share is fixed"):
            check_drift(reference, current, None, DriftSettings(methods={"new_item_share": "psi"}))


class TestDegenerateInputs:
    def test_constant_columns_and_single_categories_stay_finite(self, world, tmp_path):
        reference = make_window(world, 2000, seed=9, days=28.0)
        current = make_window(world, 500, seed=10, start=NEXT)
        for w in (reference, current):
            w["rating"] = 4.0
            w["item_id"] = 7  # one item: one popularity decile, one genre set
            w["item_genres"] = ""
            w["user_age"] = 30
        current["item_release_year"] = 0  # all unknown -> signal cannot be tested
        report = check_drift(reference, current, tmp_path, DriftSettings())
        assert_no_nan(report.to_dict())
        one_item = ("item_popularity_decile", "top_items_share", "rising_item_share", "new_item_share")
        for name in ("rating", "user_age", "genre", *one_item):
            assert signal(report, name).tested and not signal(report, name).drifted, name
            assert signal(report, name).value == pytest.approx(0.0, abs=1e-9), name
        year = signal(report, "item_release_year")
        assert not year.tested and "no item_release_year values in the current window" in year.note
        assert report.severity == "none", report.reason

    def test_a_constant_reference_against_a_varied_window_is_finite(self, world):
        reference = make_window(world, 500, seed=20)
        reference["rating"] = 3.0
        current = make_window(world, 500, seed=21, start=NEXT)
        rating = signal(check_drift(reference, current, None, DriftSettings()), "rating")
        assert rating.drifted and 0 < rating.value < 5  # pooled spread, not the reference's zero spread
        assert_no_nan(asdict_safe(rating))

    def test_daily_windows_do_not_test_the_weekly_rhythm(self, world):
        reference = make_window(world, 1000, seed=11, days=1)
        current = make_window(world, 1000, seed=12, start=START + pd.Timedelta(days=1), days=1)
        report = check_drift(reference, current, None, DriftSettings())
        assert not signal(report, "day_of_week").tested
        assert signal(report, "hour_of_day").tested
        assert_no_nan(report.to_dict())

    @pytest.mark.parametrize("n", [1, 5])
    def test_windows_with_too_few_users_are_not_tested(self, world, n):
        reference = make_window(world, n, seed=13)
        current = make_window(world, n, seed=14, start=NEXT, rating_shift=2.0)
        report = check_drift(reference, current, None, DriftSettings())
        assert_no_nan(report.to_dict())
        assert report.severity == "none" and not any(s.tested for s in report.signals)
        assert all("min_users" in s.note or "no " in s.note or "spans" in s.note for s in report.signals)
        assert report.reason == "no signal could be tested: no drift declared"


def asdict_safe(result) -> dict:
    from dataclasses import asdict

    return asdict(result)
