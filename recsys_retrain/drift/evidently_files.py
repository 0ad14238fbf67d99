"""``drift.json`` and ``drift.html``: the verdict beside Evidently's report of the same signals.

Evidently draws one ``ValueDrift`` per tested signal (histogram signals at their
calibrated threshold, share signals as per-row labels under its z-test); its numbers
can differ from the verdict's, and the verdict is ours (docs/drift.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.drift.signals import Observed, Signal
from recsys_retrain.drift.verdict import DriftReport
from recsys_retrain.io import write_json, write_text


def write_files(report: DriftReport, tested: list[Signal], observed: dict[str, Observed], out_dir: Path) -> tuple[str, str]:
    """Evidently's report of the tested signals (drawn at our thresholds) and the verdict as JSON."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    thresholds = {r.name: r.threshold for r in report.signals}
    drawn = [s for s in tested if _labels(s, observed[s.name], "ref") is not None]
    frames = {}
    for side in ("ref", "cur"):
        frames[side] = pd.DataFrame({s.name: pd.Series(_labels(s, observed[s.name], side)) for s in drawn})
    definition = DataDefinition(
        numerical_columns=[s.name for s in drawn if not s.categorical],
        categorical_columns=[s.name for s in drawn if s.categorical],
    )
    metrics = [
        ValueDrift(column=s.name, method="z") if s.method.startswith("share")
        else ValueDrift(column=s.name, method=s.method, threshold=max(thresholds[s.name], 1e-9))
        for s in drawn
    ]
    snapshot = Report(metrics, tags=["drift"]).run(
        Dataset.from_pandas(frames["cur"], data_definition=definition),
        Dataset.from_pandas(frames["ref"], data_definition=definition),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"verdict": report.to_dict(), "evidently": json.loads(snapshot.json())}
    json_path = write_json(payload, out_dir / "drift.json", indent=1)
    html_path = write_text(snapshot.get_html_str(as_iframe=False), out_dir / "drift.html")
    return str(json_path), str(html_path)


def _labels(signal: Signal, obs: Observed, side: str) -> np.ndarray | None:
    """Per-row values Evidently draws for ``signal`` on ``side``; None when it has no reference analogue."""
    prefix = {"item_popularity_decile": "decile_", "top_items_share": "top_", "new_item_share": "new_"}.get(signal.name, "")
    return obs.labels.get(prefix + side)
