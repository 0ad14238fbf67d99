"""Spec of recsys_retrain.drift.observations: new users against enough history, sessions, users pooled into groups."""

from __future__ import annotations

import pandas as pd

from recsys_retrain.drift.check import check_drift
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, START, make_window, signal


class TestObservations:
    def test_a_short_reference_leaves_new_user_share_untested(self, world):
        reference = make_window(world, 3000, seed=24)
        current = make_window(world, 3000, seed=25, start=START + pd.Timedelta(days=7))
        users = signal(check_drift(reference, current, None, DriftSettings()), "new_user_share")
        assert not users.tested and "under twice the current window" in users.note

    def test_single_row_sessions_leave_session_pace_untested(self, world, reference):
        current = make_window(world, 3000, seed=28, start=NEXT)
        current = current[~current.assign(day=current["timestamp"].dt.floor("D")).duplicated(["user_id", "day"])]
        pace = signal(check_drift(reference, current, None, DriftSettings()), "session_pace")
        assert not pace.tested and pace.value == 0.0 and "no session_pace values in the current window" in pace.note

    def test_big_windows_pool_users_into_groups(self, world, reference):
        current = make_window(world, 3000, seed=17, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings(max_units=50))
        assert "rating" in report.drifted_signals
        assert signal(report, "rating").n_reference > 50  # users are counted, groups are tested
