"""Spec of recsys_retrain.drift.evidently_metrics: Evidently's page shows the calibrated numbers and the project's verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recsys_retrain.drift.check import check_drift
from recsys_retrain.drift.evidently_metrics import outcomes
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, make_window


@pytest.mark.parametrize(("label", "kwargs"), [("calm", {}), ("drifted", {"rating_shift": 0.8, "long_tail": True})])
def test_the_page_and_the_snapshot_agree_with_the_verdict(world, reference, tmp_path, label, kwargs):
    current = make_window(world, 3000, seed=8, start=NEXT, **kwargs)
    report = check_drift(reference, current, tmp_path / label, DriftSettings())
    payload = json.loads(Path(report.json_path).read_text())
    tests = outcomes(payload["evidently"])
    tested = [s for s in report.signals if s.tested]
    assert tests == {**{s.name: s.drifted for s in tested}, "verdict": report.severity != "none"}  # test FAIL == drifted
    page = Path(report.html_path).read_text()
    for s in tested:  # the page names the calibrated value and threshold, and the verdict, of every signal
        shown = re.escape(f"{s.name}: {s.method} {s.value:.4f} vs calibrated threshold {s.threshold:.4f}")
        assert re.search(shown + r"[^>]*-> " + ("drifted" if s.drifted else "no drift"), page), s.name
    assert f"drift verdict: {report.severity}" in page
    assert "Evidently's default" in page  # and says why Evidently's own statistic is not the one shown
    if label == "drifted":
        assert report.severity != "none" and report.drifted_signals
