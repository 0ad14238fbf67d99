"""``drift.json`` and ``drift.html``: the verdict and Evidently's snapshot of the same calibrated numbers.

The snapshot (``recsys_retrain.drift.evidently_metrics``) shows each tested signal's
calibrated statistic against its calibrated threshold, with the verdict as the tests'
outcome, so the HTML page and the verdict cannot disagree; each metric's name says
why Evidently's default row-wise statistic is not the one shown (docs/drift.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from recsys_retrain.drift.signals import Signal
from recsys_retrain.drift.verdict import DriftReport
from recsys_retrain.io import write_json, write_text


def write_files(report: DriftReport, tested: list[Signal], out_dir: Path, window: str = "",
                timestamp=None) -> tuple[str, str]:
    """Evidently's snapshot of the verdict as ``drift.html`` and the verdict with the snapshot as ``drift.json``."""
    from recsys_retrain.drift.evidently_metrics import run_snapshot

    snapshot = run_snapshot(report.to_dict(), {s.name: s.categorical for s in tested}, window, timestamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"verdict": report.to_dict(), "evidently": json.loads(snapshot.json())}
    json_path = write_json(payload, out_dir / "drift.json", indent=1)
    html_path = write_text(snapshot.get_html_str(as_iframe=False), out_dir / "drift.html")
    return str(json_path), str(html_path)
