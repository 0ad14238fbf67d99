"""Cycle folders as the DAGs leave them, for three weeks, without training: what the monitoring code reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_retrain.drift.verdict import DriftReport, SignalResult
from recsys_retrain.settings import Settings

WEEKS = ("19980105", "19980112", "19980119", "19980126")  # three windows: 05-12, 12-19, 19-26


def folder(settings: Settings, i: int) -> Path:
    return settings.runs_dir / f"{WEEKS[i]}-{WEEKS[i + 1]}"


def window(i: int) -> str:
    import pandas as pd

    return f"{pd.Timestamp(WEEKS[i], tz='UTC').isoformat()}/{pd.Timestamp(WEEKS[i + 1], tz='UTC').isoformat()}"


def pulled(settings: Settings, i: int) -> dict:
    start, end = window(i).split("/")
    return {"run_dir": str(folder(settings, i)), "start": start, "end": end, "rows_window": 3000 + i}


def write_week(settings: Settings, i: int) -> dict | None:
    """Week ``i``'s files: drift verdict (week 1 drifts major), trigger, served quality, monitor (week 2 reverts),
    and, on week 1, the gate's summary (a promotion with a refit) — returned as the ``decided`` XCom."""
    run = folder(settings, i)
    (run / "drift").mkdir(parents=True)
    drifted = i == 1
    signals = tuple(
        SignalResult(name, "jensenshannon", 0.05 + (0.3 if drifted and name != "rating" else 0.01 * i), 0.1,
                     drifted and name != "rating", True, 300, 300, p_value=0.01 if drifted else 0.5)
        for name in ("rating", "genre", "item_popularity_decile")
    ) + (SignalResult("user_age", "wasserstein", 0.0, 0.0, False, False, 5, 5, note="too few users"),)
    verdict = DriftReport(signals, 2 / 3 if drifted else 0.0, "major" if drifted else "none", f"reason {i}", 0.2, 0.5,
                          9000, 3000 + i, "", "")
    (run / "drift" / "drift.json").write_text(json.dumps({"verdict": verdict.to_dict()}))
    (run / "trigger.json").write_text(json.dumps({"window": window(i), "severity": verdict.severity, "retrain_on": "major",
                                                  "retrain": drifted, "reason": f"drift {verdict.severity}"}))
    (run / "served.json").write_text(json.dumps({"window": window(i), "version": 1 if i < 2 else 3, "ndcg": 0.2 + 0.01 * i,
                                                 "recent_pop_ndcg": 0.22, "ease_ndcg": 0.21, "users": 300 + i}))
    (run / "monitor.json").write_text(json.dumps({
        "window": window(i), "revert": i == 2, "reverted": i == 2, "champion_version": 3, "previous_version": 1,
        "consecutive": 2 if i == 2 else 0, "required": 2, "reason": "worse twice" if i == 2 else "no pair",
        "windows": [{"window": window(i), "champion_ndcg": 0.18, "previous_ndcg": 0.22, "mean_delta": -0.04,
                     "ci_low": -0.06, "ci_high": -0.02}] if i == 2 else []}))
    if not drifted:
        return None
    summary = {"window": window(i), "version": 2, "served_version": 3, "promoted": True, "challenger_ndcg": 0.25,
               "champion_ndcg": 0.21, "reason": "better by 0.04"}
    (run / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture(scope="module")
def weeks_logged(tmp_path_factory) -> Settings:
    """Three weeks through the record steps, as the DAGs run them: the monitor, then the drift watch (week 1 retrains).

    One MLflow store per test module (creating one takes seconds); the tests read it, and a
    re-run into it changes nothing by design.
    """
    import mlflow

    from recsys_retrain import cycle

    settings = Settings(home=tmp_path_factory.mktemp("monitoring") / "home")
    for i in range(3):
        summary = write_week(settings, i)
        cycle.record(pulled(settings, i), "champion_monitor", f"monitor-{i}", settings=settings)
        cycle.record(pulled(settings, i), "drift_watch", f"drift-{i}", summary, settings=settings)
    yield settings
    mlflow.set_tracking_uri(None)
