"""Spec of recsys_retrain.drift.evidently_files: drift.json and drift.html, written whole and only with an out_dir."""

from __future__ import annotations

import json
from pathlib import Path

from recsys_retrain.drift.check import check_drift
from recsys_retrain.drift.verdict import DriftReport
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, make_window


class TestOutputs:
    def test_files_are_written_whole_and_only_with_an_out_dir(self, world, reference, tmp_path):
        out = tmp_path / "run-1" / "drift"
        current = make_window(world, 3000, seed=8, start=NEXT)
        report = check_drift(reference, current, out, DriftSettings())
        assert Path(report.json_path) == out / "drift.json"
        assert Path(report.html_path) == out / "drift.html"
        payload = json.loads(Path(report.json_path).read_text())
        assert DriftReport.from_dict(payload["verdict"]).signals == report.signals
        drawn = {m["config"]["signal"] for m in payload["evidently"]["metrics"] if m["config"].get("signal")}
        assert drawn == {s.name for s in report.signals if s.tested}  # every tested signal, at its calibrated value
        assert "<html" in Path(report.html_path).read_text()[:2000].lower()
        assert sorted(p.name for p in out.iterdir()) == ["drift.html", "drift.json"]  # no temp files left
        quiet = check_drift(reference, current, None, DriftSettings())
        assert quiet.json_path == quiet.html_path == "" and quiet.signals == report.signals
