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
    profile = property(lambda self: self.root / "profile.json")


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
    """Validates history and window (bad rows go to quarantine files beside them) and profiles the window."""
    from pipeline import data
    from pipeline.profile import profile

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    counts = {}
    for name, path in (("history", p.history), ("window", p.holdout), ("reference", p.reference)):
        frame = pd.read_parquet(path)
        clean = data.validate(frame, s.data, p.root / f"quarantine_{name}.parquet")
        _write_parquet(clean, path)
        counts[f"bad_{name}"] = len(frame) - len(clean)
    prof = profile(pd.read_parquet(p.holdout), pd.read_parquet(p.reference), pulled["start"], pulled["end"])
    _write_json(prof.to_dict(), p.profile)
    return {**pulled, **counts, "profile": str(p.profile)}


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
        "drifted": list(report.drifted_signals),
        "reason": report.reason,
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
    """Scores challenger and current champion per user, on the same window with the same exclusions.

    The per-user vectors go to a file in the cycle folder (the gate's bootstrap needs
    them); the XCom carries the means and the champion that was judged.
    """
    from pipeline import gate, registry
    from pipeline.train import load_checkpoint

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    history, holdout = pd.read_parquet(p.history), pd.read_parquet(p.holdout)
    k, head = s.eval.k, s.gate.head_share
    challenger = gate.user_metrics(load_checkpoint(Path(trained["checkpoint"])), history, holdout, k, head)
    champion, champion_error, current = None, None, registry.champion(s)
    if current is not None:
        trained_until = _ts(current.window.split("/")[0])
        if trained_until > _ts(pulled["start"]):
            raise PipelineError(
                f"champion v{current.version} was trained on data up to {trained_until.date()}, after this "
                f"window's start {_ts(pulled['start']).date()}: it cannot be judged on this window"
            )
        model, champion_error = registry.try_load(s, current.version)
        if model is not None:
            champion = gate.user_metrics(model, history, holdout, k, head)
    path = p.root / "per_user_metrics.json"
    _write_json({"challenger": challenger.to_dict(), "champion": champion.to_dict() if champion else None}, path)
    return {
        "per_user": str(path),
        "challenger": challenger.metrics,
        "champion": champion.metrics if champion else None,
        "champion_version": current.version if current else None,
        "champion_error": champion_error,
    }


def gate(
    pulled: dict[str, Any],
    drift_result: dict[str, Any],
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Registers the challenger, runs the significance gate and moves the aliases; writes summary.json.

    The champion is the one evaluated before registering, so a retried gate task
    repeats the same decision instead of comparing the challenger with itself.
    """
    from pipeline import gate as gating
    from pipeline import registry
    from pipeline.model import FEATURE_SERVICE
    from pipeline.train import load_checkpoint

    s = settings or get_settings()
    p = CyclePaths(Path(pulled["run_dir"]))
    window = f"{pulled['start']}/{pulled['end']}"
    drift_files = (("drift.html", "html"), ("drift.json", "json"))
    artifacts = {name: Path(drift_result[key]) for name, key in drift_files if drift_result[key]}
    artifacts["profile.json"] = p.profile
    candidate = registry.log_candidate(
        load_checkpoint(Path(trained["checkpoint"])),
        settings=s,
        window=window,
        params={**s.train.model_dump(), "rows_history": pulled["rows_history"]},
        metrics={**evaluated["challenger"], "train_seconds": trained["seconds"], "final_loss": trained["epoch_losses"][-1]},
        artifacts=artifacts,
        tags={"drift.severity": drift_result["severity"], "window": window, "feature_service": FEATURE_SERVICE},
    )
    per_user = json.loads(Path(evaluated["per_user"]).read_text())
    model, load_error = registry.try_load(s, candidate.version)  # the registered artifact, not the checkpoint
    decision = gating.decide(
        gating.UserEval.from_dict(per_user["challenger"]) if model is not None else None,
        gating.UserEval.from_dict(per_user["champion"]) if per_user["champion"] else None,
        s.gate,
        challenger_version=candidate.version,
        champion_version=evaluated["champion_version"],
        window=window,
        load_error=load_error,
        reverted_on=registry.reverted_on(s, candidate.version),
    )
    promoted = registry.apply_decision(decision, s, actor="gate")
    summary = {
        "window": window,
        "rows_window": pulled["rows_window"],
        "drift": drift_result["severity"],
        "challenger_ndcg": decision.challenger_value,
        "champion_ndcg": decision.champion_value,
        "ci": [decision.ci_low, decision.ci_high],
        "version": candidate.version,
        "promoted": promoted,
        "reason": decision.reason,
    }
    _write_json(summary, p.summary)
    return summary
