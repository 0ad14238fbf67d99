"""The steps of one retraining cycle, in the shape Airflow tasks call them.

A cycle covers one window ``[start, end)`` of fresh interactions. The model is
trained on everything before ``start`` and judged on the window itself, the
"next window" after its training data; the drift check compares the window with
the week before it. Each step reads what the previous one wrote into the cycle's
folder and returns a small JSON-able dict (paths, counts, decisions), never a
dataframe, so the DAG passes only those between tasks. Re-running a step for the
same window rewrites the same files and, in the registry, reuses the same version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.settings import Settings, get_settings

HISTORY_START = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass(frozen=True)
class CyclePaths:
    """Where one cycle's files live; the window's dates name the folder."""

    root: Path

    @classmethod
    def of(cls, settings: Settings, start: str, end: str) -> CyclePaths:
        name = f"{_ts(start):%Y%m%d}-{_ts(end):%Y%m%d}"
        return cls(settings.runs_dir / name)

    history = property(lambda self: self.root / "history.parquet")
    holdout = property(lambda self: self.root / "holdout.parquet")
    reference = property(lambda self: self.root / "reference.parquet")
    catalogue = property(lambda self: self.root / "catalogue.parquet")
    drift_dir = property(lambda self: self.root / "drift")
    model_dir = property(lambda self: self.root / "model")
    summary = property(lambda self: self.root / "summary.json")


def _ts(value: str | datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _write_json(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def pull(start: str, end: str, settings: Settings | None = None) -> dict[str, Any]:
    """Pulls the training history, the window and the catalogue from the feature store."""
    from pipeline import data

    s = settings or get_settings()
    p = CyclePaths.of(s, start, end)
    t0, t1 = _ts(start), _ts(end)
    history = data.pull_window(s.feature_repo, HISTORY_START, t0)
    holdout = data.pull_window(s.feature_repo, t0, t1)
    reference = history[history["timestamp"] >= t0 - timedelta(days=s.drift.reference_days)]
    _write_parquet(history, p.history)
    _write_parquet(holdout, p.holdout)
    _write_parquet(reference, p.reference)
    _write_parquet(data.item_catalogue(s.feature_repo, t0), p.catalogue)
    return {
        "run_dir": str(p.root),
        "start": t0.isoformat(),
        "end": t1.isoformat(),
        "rows_history": len(history),
        "rows_window": len(holdout),
        "rows_reference": len(reference),
    }


def validate(pulled: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Validates history and window; bad rows go to quarantine files beside them."""
    from pipeline import data

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    counts = {}
    for name, path in (("history", p.history), ("window", p.holdout), ("reference", p.reference)):
        frame = pd.read_parquet(path)
        clean = data.validate(frame, s.data, p.root / f"quarantine_{name}.parquet")
        _write_parquet(clean, path)
        counts[f"bad_{name}"] = len(frame) - len(clean)
    return {**pulled, **counts}


def drift(pulled: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Compares the window with the week before it on designed interaction signals."""
    from pipeline.drift import check_drift

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    report = check_drift(pd.read_parquet(p.reference), pd.read_parquet(p.holdout), p.drift_dir, s.drift)
    return {
        "severity": report.severity,
        "drifted_share": report.drifted_share,
        "html": report.html_path,
        "json": report.json_path,
    }


def train(pulled: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Trains the challenger on the history; returns the checkpoint path and losses."""
    from pipeline.train import train as train_model

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    history = pd.read_parquet(p.history)
    result = train_model(history, pd.read_parquet(p.catalogue), p.model_dir, s.train, progress=False)
    return result.to_dict()


def evaluate(pulled: dict[str, Any], trained: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Scores challenger and current champion on the same window with the same exclusions."""
    from pipeline import registry
    from pipeline.evaluate import evaluate as evaluate_model
    from pipeline.train import load_checkpoint

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    history, holdout = pd.read_parquet(p.history), pd.read_parquet(p.holdout)
    challenger = evaluate_model(load_checkpoint(Path(trained["checkpoint"])), history, holdout, s.eval.k)
    champion = None
    current = registry.champion(s)
    if current is not None:
        trained_until = _ts(current.window.split("/")[0])
        if trained_until > _ts(pulled["start"]):
            raise PipelineError(
                f"champion v{current.version} was trained on data up to {trained_until.date()}, after this "
                f"window's start {_ts(pulled['start']).date()}: it cannot be judged on this window"
            )
        champion = evaluate_model(registry.load_model(s, current.version), history, holdout, s.eval.k)
    return {
        "challenger": challenger.to_dict(),
        "champion": champion.to_dict() if champion else None,
        "champion_version": current.version if current else None,
    }


def gate(
    pulled: dict[str, Any],
    drift_result: dict[str, Any],
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Registers the challenger, decides on promotion and moves the aliases; writes summary.json."""
    from pipeline import registry
    from pipeline.evaluate import EvalResult
    from pipeline.train import load_checkpoint

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    challenger = EvalResult.from_dict(evaluated["challenger"])
    champion = EvalResult.from_dict(evaluated["champion"]) if evaluated["champion"] else None
    window = f"{pulled['start']}/{pulled['end']}"
    candidate = registry.log_candidate(
        load_checkpoint(Path(trained["checkpoint"])),
        settings=s,
        window=window,
        params={**s.train.model_dump(), "rows_history": pulled["rows_history"]},
        metrics={**challenger.metrics, "train_seconds": trained["seconds"], "final_loss": trained["epoch_losses"][-1]},
        artifacts={name: Path(drift_result[key]) for name, key in (("drift.html", "html"), ("drift.json", "json")) if drift_result[key]},
        tags={"drift.severity": drift_result["severity"], "window": window},
    )
    # The champion is the one evaluated before registering, so a retried gate task
    # repeats the same decision instead of comparing the challenger with itself.
    decision = registry.decide(
        challenger.metrics[s.gate.metric],
        champion.metrics[s.gate.metric] if champion else None,
        s.gate,
        challenger_version=candidate.version,
        champion_version=evaluated["champion_version"],
    )
    registry.apply_decision(decision, s)
    summary = {
        "window": window,
        "rows_window": pulled["rows_window"],
        "drift": drift_result["severity"],
        "challenger_ndcg": challenger.ndcg,
        "champion_ndcg": champion.ndcg if champion else None,
        "version": candidate.version,
        "promoted": decision.promote,
        "reason": decision.reason,
    }
    _write_json(summary, p.summary)
    return summary
