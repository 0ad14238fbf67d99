"""Spec of recsys_retrain.drift.calibration: user-permutation thresholds keep false alarms rare, and repeat."""

from __future__ import annotations

from recsys_retrain.drift.check import check_drift
from recsys_retrain.drift.signals import SIGNALS
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, make_window


class TestCalibration:
    def test_identical_distributions_give_no_drift(self, world, reference):
        current = make_window(world, 3000, seed=2, start=NEXT)
        report = check_drift(reference, current, None, DriftSettings())
        assert report.severity == "none", report.reason
        assert report.drifted_signals == ()
        assert all(s.tested for s in report.signals), [s.note for s in report.signals]
        assert {s.name for s in report.signals} == {s.name for s in SIGNALS}

    def test_false_alarms_stay_rare_on_exchangeable_windows(self, world):
        alarms = [
            check_drift(make_window(world, 4000, seed=100 + i, days=28.0), make_window(world, 1000, seed=200 + i, start=NEXT),
                        None, DriftSettings(permutations=300)).severity != "none"
            for i in range(15)
        ]
        assert sum(alarms) <= 2  # alpha 0.03: two alarms in 15 would already be unlucky (p 0.07)

    def test_checks_are_deterministic(self, world, reference):
        current = make_window(world, 2000, seed=15, start=NEXT)
        assert check_drift(reference, current, None, DriftSettings()) == check_drift(reference, current, None, DriftSettings())
