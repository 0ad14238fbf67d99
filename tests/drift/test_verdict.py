"""Spec of recsys_retrain.drift.verdict: severity from the drifted signals, with the numbers that decided it."""

from __future__ import annotations

import json

import pytest

from recsys_retrain.drift.check import check_drift
from recsys_retrain.drift.verdict import DriftReport
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, make_window, signal


class TestVerdicts:
    def test_one_strongly_drifted_signal_is_enough(self, world, reference):
        current = make_window(world, 3000, seed=3, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings())
        rating = signal(report, "rating")
        assert rating.drifted and rating.method == "wasserstein" and rating.value > rating.threshold
        assert rating.p_value < 0.01
        assert report.severity == "major", report.reason  # far above its threshold
        assert "rating" in report.reason

    def test_severity_follows_the_settings(self, world, reference):
        current = make_window(world, 3000, seed=5, start=NEXT, rating_shift=0.5)
        base = check_drift(reference, current, None, DriftSettings())
        assert base.drifted_signals and base.severity != "none"
        lenient = check_drift(reference, current, None, DriftSettings(min_drifted_signals=5, minor_share=1.0, major_share=1.0, major_ratio=1e6))
        assert lenient.severity == "none" and lenient.drifted_share == base.drifted_share
        strict = check_drift(reference, current, None, DriftSettings(major_share=0.05))
        assert strict.severity == "major"
        floored = check_drift(reference, current, None, DriftSettings(stattest_threshold=10.0))
        assert floored.severity == "none" and all(s.threshold >= 10.0 for s in floored.signals)

    def test_every_decision_carries_its_numbers(self, world, reference):
        current = make_window(world, 2000, seed=6, start=NEXT, rating_shift=0.7)
        settings = DriftSettings(floors={"rating": 0.05})
        report = check_drift(reference, current, None, settings)
        tested = [s for s in report.signals if s.tested]
        for s in tested:
            assert s.drifted == (s.value > s.threshold), s
            assert 0 < s.p_value <= 1 and s.n_reference > 0 and s.n_current > 0
        assert signal(report, "rating").threshold >= 0.05
        assert report.drifted_share == pytest.approx(sum(s.drifted for s in tested) / len(tested))
        assert (report.reference_rows, report.current_rows) == (12000, 2000)
        assert str(len(report.drifted_signals)) in report.reason
        assert (report.alpha, report.permutations) == (settings.alpha, settings.permutations)


class TestOutputs:
    def test_round_trip_through_json(self, world, reference, tmp_path):
        current = make_window(world, 3000, seed=7, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings())
        again = DriftReport.from_dict(json.loads(json.dumps(report.to_dict())))
        assert again == report
