"""One MLflow run per DAG run: what the week's drift check, trigger, gate and monitor decided, with their numbers.

Every ``drift_watch``, ``retrain_scheduled`` and ``champion_monitor`` run ends with a
``record`` task that calls :func:`log_run`, whichever branch ran, so a check that
stopped below the trigger leaves its evidence in MLflow as well as in its cycle
folder. The runs live in the ``<model>-monitoring`` experiment and carry the tags
``monitoring=true``, ``dag_id``, ``run_id``, ``kind``, ``window_start`` and
``window_end``, so one search returns the timeline::

    mlflow.search_runs(experiment_names=["two_tower-monitoring"], filter_string="tags.monitoring = 'true'")

A re-run of the same DAG for the same window updates its run instead of adding one
(the key is ``dag_id`` and ``window_end``). :func:`evidence` is pure: the cycle folder's
files in, params, metrics and tags out; :func:`weeks` turns the runs back into one
row per week (what the report's table shows).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_retrain.settings import Settings

KINDS = {"drift_watch": "drift", "retrain_scheduled": "retrain", "champion_monitor": "monitor"}
"""The kind of evidence each DAG's run records (other DAG ids, e.g. a renamed copy, record as ``retrain``)."""
SEVERITY_LEVEL = {"none": 0, "minor": 1, "major": 2}
TAG_MAX = 4000  # MLflow tag values are capped (8,000 characters on SQL stores): reasons are cut to this


@dataclass(frozen=True)
class Evidence:
    """What one DAG run logs: immutable params (its window), metrics (numbers) and tags (decisions, reasons)."""

    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _cut(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= TAG_MAX else text[: TAG_MAX - 1] + "…"


def _num(metrics: dict[str, float], key: str, value: Any) -> None:
    if isinstance(value, bool):
        metrics[key] = float(value)
    elif isinstance(value, (int, float)) and value == value:  # NaN is left out: MLflow's charts break on it
        metrics[key] = float(value)


def evidence(run_dir: Path, kind: str, summary: dict[str, Any] | None = None) -> Evidence:
    """The evidence of one run of ``kind`` ("drift", "retrain" or "monitor") from its cycle folder.

    ``summary`` is the gate's outcome when this run reached it (the ``decided`` task's
    XCom); None when it stopped before (below the trigger, or a monitor run). Alerts
    are the events this run raises: a drift at or above the trigger, a rejected
    challenger, a revert.
    """
    run_dir = Path(run_dir)
    start, end = _window(run_dir)
    params = {"window_start": start, "window_end": end, "kind": kind}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    alerts: list[dict[str, Any]] = []
    window = f"{start}/{end}"
    if kind in ("drift", "retrain"):
        verdict = (_read(run_dir / "drift" / "drift.json") or {}).get("verdict") or {}
        if verdict:
            tags.update(severity=verdict["severity"], drift_reason=_cut(verdict.get("reason")),
                        drifted=",".join(s["name"] for s in verdict["signals"] if s["drifted"]))
            _num(metrics, "drift.severity_level", SEVERITY_LEVEL.get(verdict["severity"], 0))
            _num(metrics, "drift.drifted_share", verdict.get("drifted_share"))
            _num(metrics, "drift.current_rows", verdict.get("current_rows"))
            _num(metrics, "drift.reference_rows", verdict.get("reference_rows"))
            for s in verdict["signals"]:
                if s["tested"]:
                    for key in ("value", "threshold", "p_value"):
                        _num(metrics, f"drift.{s['name']}.{key}", s[key])
                    _num(metrics, f"drift.{s['name']}.drifted", bool(s["drifted"]))
        trigger = _read(run_dir / "trigger.json") if kind == "drift" else None
        if trigger:
            tags.update(trigger="retrain" if trigger["retrain"] else "stop", retrain_on=trigger["retrain_on"],
                        trigger_reason=_cut(trigger["reason"]))
            _num(metrics, "trigger.retrain", bool(trigger["retrain"]))
            if trigger["retrain"]:
                alerts.append({"event": "drift", "window": window, "severity": trigger["severity"],
                               "retrain_on": trigger["retrain_on"], "reason": trigger["reason"]})
        if summary:
            tags.update({"gate.decision": "promote" if summary.get("promoted") else "reject",
                         "gate.reason": _cut(summary.get("reason"))})
            for key in ("promoted", "version", "served_version", "challenger_ndcg", "champion_ndcg"):
                _num(metrics, f"gate.{key}", summary.get(key))
            if not summary.get("promoted"):
                alerts.append({"event": "challenger_rejected", "window": window, "version": summary.get("version"),
                               "reason": summary.get("reason")})
    if kind == "monitor":
        monitor = _read(run_dir / "monitor.json") or {}
        served = _read(run_dir / "served.json") or {}
        if monitor:
            tags.update({"monitor.decision": "revert" if monitor.get("reverted") else "keep",
                         "monitor.reason": _cut(monitor.get("reason"))})
            for key in ("reverted", "champion_version", "previous_version", "consecutive", "required"):
                _num(metrics, f"monitor.{key}", monitor.get(key))
            last = next((w for w in monitor.get("windows") or [] if w.get("window") == window), None)
            for key in ("champion_ndcg", "previous_ndcg", "mean_delta", "ci_low", "ci_high"):
                _num(metrics, f"monitor.{key}", (last or {}).get(key))
            if monitor.get("reverted"):
                alerts.append({"event": "revert", "window": window, "version": monitor.get("champion_version"),
                               "to_version": monitor.get("previous_version"), "reason": monitor.get("reason")})
        for key in ("ndcg", "version", "recent_pop_ndcg", "ease_ndcg", "users"):
            _num(metrics, f"served.{key}", served.get(key))
    return Evidence(params, metrics, tags, alerts)


def _window(run_dir: Path) -> tuple[str, str]:
    """The cycle folder's window as ISO timestamps, from its name (``YYYYmmdd-YYYYmmdd``)."""
    from recsys_retrain.io import utc

    first, last = run_dir.name.split("-")[:2]
    return utc(first).isoformat(), utc(last).isoformat()


def experiment_id(settings: Settings) -> str:
    """The monitoring experiment's id, created on first use (artifacts beside the model's under a SQLite store)."""
    from mlflow.exceptions import MlflowException

    from recsys_retrain.registry.client import connect

    client = connect(settings)
    name = settings.monitoring_experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = settings.artifact_root.as_uri() if settings.mlflow_uri.startswith("sqlite:///") else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={"monitoring": "true"})
    except MlflowException:  # another task created it in between
        return client.get_experiment_by_name(name).experiment_id


def find_run(client: Any, experiment: str, dag_id: str, run_id: str, window_end: str | None = None) -> str | None:
    """The id of the monitoring run this DAG run (or this DAG, for this window) already has, if any."""
    for where in (f"tags.run_id = '{_quote(run_id)}'", f"tags.window_end = '{window_end}'" if window_end else None):
        if where:
            found = client.search_runs([experiment], filter_string=f"tags.dag_id = '{_quote(dag_id)}' and {where}",
                                       max_results=1)
            if found:
                return found[0].info.run_id
    return None


def _quote(text: str) -> str:
    return str(text).replace("'", "\\'")


def run_of(settings: Settings, dag_id: str, run_id: str) -> str:
    """The monitoring run of a DAG run that failed before its ``record`` task: found, or created and marked FAILED.

    So a failed task's event has a run to be tagged on, and a failed DAG run is in the
    timeline's search too (with no window: it stopped before one was known).
    """
    from mlflow.entities import RunTag

    from recsys_retrain.registry.client import connect

    client, experiment = connect(settings), experiment_id(settings)
    found = find_run(client, experiment, dag_id, run_id)
    if found:
        return found
    created = client.create_run(experiment, run_name=f"{KINDS.get(dag_id, 'retrain')} failed", tags={"monitoring": "true"})
    tags = {"dag_id": dag_id, "run_id": run_id, "kind": KINDS.get(dag_id, "retrain"), "failed": "true"}
    client.log_batch(created.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(created.info.run_id, "FAILED")
    return created.info.run_id


def log_run(
    settings: Settings, dag_id: str, run_id: str, run_dir: Path, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Logs (or updates) this DAG run's monitoring run from its cycle folder; returns its id, kind and alerts.

    The alerts (``Evidence.alerts``) are emitted by the caller once the run exists,
    so each event's MLflow tag lands on it (``recsys_retrain.alerts.emit``); ``alerted``
    names the events an earlier run for the same window already tagged.
    """
    from mlflow.entities import Metric, Param, RunTag

    from recsys_retrain.registry.client import connect

    kind = KINDS.get(dag_id, "retrain")
    ev = evidence(Path(run_dir), kind, summary)
    client = connect(settings)
    experiment = experiment_id(settings)
    tags = {"monitoring": "true", "dag_id": dag_id, "run_id": run_id, "kind": kind,
            "window_start": ev.params["window_start"], "window_end": ev.params["window_end"],
            "run_dir": str(run_dir), "failed": "false", **ev.tags}
    existing = find_run(client, experiment, dag_id, run_id, ev.params["window_end"])
    mlflow_run = existing or client.create_run(
        experiment, run_name=f"{kind} {ev.params['window_start'][:10]}", tags={"monitoring": "true"}
    ).info.run_id
    before = client.get_run(existing).data if existing else None
    logged = before.params if before else {}
    now = int(time.time() * 1000)
    client.log_batch(
        mlflow_run,
        metrics=[Metric(k, v, now, 0) for k, v in sorted(ev.metrics.items())],
        params=[Param(k, v) for k, v in ev.params.items() if k not in logged],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(mlflow_run, "FINISHED")
    return {"mlflow_run_id": mlflow_run, "kind": kind, "window": f"{ev.params['window_start']}/{ev.params['window_end']}",
            "updated": existing is not None, "alerts": ev.alerts,
            "alerted": sorted(k.removeprefix("alert.") for k in (before.tags if before else {}) if k.startswith("alert."))}


def search(settings: Settings, start: str | None = None, end: str | None = None):
    """The monitoring runs as a DataFrame (``mlflow.search_runs``), oldest window first; windows inside ``[start, end)``."""
    import mlflow
    import pandas as pd

    from recsys_retrain.io import utc
    from recsys_retrain.registry.client import configure, quiet

    configure(settings)
    with quiet():
        runs = mlflow.search_runs(experiment_names=[settings.monitoring_experiment],
                                  filter_string="tags.monitoring = 'true'", max_results=50_000)
    for column in ("tags.window_start", "tags.window_end", "tags.kind"):
        if column not in runs.columns:  # only failed runs so far (no window), or none at all
            runs[column] = None
    if runs.empty:
        return runs
    starts = pd.to_datetime(runs["tags.window_start"], utc=True)
    keep = pd.Series(True, index=runs.index)
    if start is not None:
        keep &= starts >= utc(start)
    if end is not None:
        keep &= pd.to_datetime(runs["tags.window_end"], utc=True) <= utc(end)
    return runs[keep].assign(_start=starts[keep]).sort_values(["_start", "start_time"]).drop(columns="_start")


def weeks(runs) -> list[dict[str, Any]]:
    """One row per window from the monitoring runs, in the shape of ``recsys_retrain.timeline.WeekResult``.

    Drift: the drift watch's severity (the retrain's when no drift watch ran);
    trained by: the run that carries a gate decision ("drift" or "schedule"); served
    quality and revert: the champion monitor's run.
    """
    out = []
    for window, group in runs.groupby(["tags.window_start", "tags.window_end"], sort=False):
        by_kind = {row["tags.kind"]: row for _, row in group.iterrows()}
        drift_run = by_kind.get("drift") if by_kind.get("drift") is not None else by_kind.get("retrain")
        gated = next(((k, r) for k, r in by_kind.items() if k in ("drift", "retrain") and _has(r, "tags.gate.decision")), None)
        latest = by_kind.get("retrain") if by_kind.get("retrain") is not None else drift_run
        monitor = by_kind.get("monitor")
        gate = gated[1] if gated else None
        out.append({
            "window": f"{window[0]}/{window[1]}",
            "rows": _int(drift_run, "metrics.drift.current_rows") or 0,
            "drift": _str(drift_run, "tags.severity") or "none",
            "drifted": tuple(x for x in (_str(latest, "tags.drifted") or "").split(",") if x),
            "trained_by": {"drift": "drift", "retrain": "schedule"}[gated[0]] if gated else None,
            "version": _int(gate, "metrics.gate.version"),
            "promoted": bool(_int(gate, "metrics.gate.promoted")),
            "challenger_ndcg": _float(gate, "metrics.gate.challenger_ndcg"),
            "refit_version": _refit(gate),
            "served_ndcg": _float(monitor, "metrics.served.ndcg"),
            "served_version": _int(monitor, "metrics.served.version"),
            "recent_pop_ndcg": _float(monitor, "metrics.served.recent_pop_ndcg"),
            "ease_ndcg": _float(monitor, "metrics.served.ease_ndcg"),
            "reverted": bool(_int(monitor, "metrics.monitor.reverted")),
            "reason": _str(gate, "tags.gate.reason") or _str(drift_run, "tags.trigger_reason") or "",
        })
    return out


def _has(row, key: str) -> bool:
    return row is not None and key in row.index and isinstance(row[key], str) and bool(row[key])


def _str(row, key: str) -> str | None:
    return row[key] if _has(row, key) else None


def _float(row, key: str) -> float | None:
    if row is None or key not in row.index or row[key] is None or row[key] != row[key]:
        return None
    return float(row[key])


def _int(row, key: str) -> int | None:
    value = _float(row, key)
    return None if value is None else int(value)


def _refit(gate) -> int | None:
    """The refit that serves after a promotion (``timeline.refit_of``: served version unlike the judged one)."""
    served, judged = _int(gate, "metrics.gate.served_version"), _int(gate, "metrics.gate.version")
    return served if served is not None and served != judged else None
