"""The demo's replay: a whole interaction timeline, week by week, through the real DAGs.

The feature store starts with the data before the first window; then, for each
weekly window ``[start, start + 7 d)``, the replay runs what a production scheduler
would run when that week's events land (each with ``dag.test()``, in-process,
on Airflow's SQLite database):

1. ``ingest`` appends the week's events (it updates the interactions asset);
2. ``champion_monitor`` checks champion against previous on the new week (auto-revert);
3. ``drift_watch`` checks the week for drift and retrains when it reaches ``retrain_on``;
4. ``retrain_scheduled`` runs on the first week and then every ``every`` weeks
   (a coarser cadence than production's weekly one, set by the replay's Params, so a
   30-week replay fits in minutes on two cores); a week whose drift run already
   retrained does not train twice.

Two events are injected, each on a named week (skipped when the week is not replayed):
a drift event (the week's events are rewritten by ``recsys_retrain.simulate`` injectors
before they are ingested) and a bad model (the champion with its item embedding
tables randomised, registered and promoted by hand past the gate, as a faulty hot-fix
would be; the monitor must revert it). Every week the monitor DAG also scores the
serving champion on the week, beside recent popularity and EASE refit on the week's
history (``served.json``), so the report can draw served quality against fresh
baselines; every DAG run logs its monitoring run in MLflow, and the report is the one
``retrain report`` builds from them (``recsys_retrain.monitoring.report``).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_retrain.io import utc, write_json, write_parquet
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings

log = logging.getLogger(__name__)
WEEK = timedelta(days=7)
DEFAULT_START = "1997-10-06"  # MovieLens-100K begins 1997-09-20: two weeks of history for the first model
DEFAULT_DRIFT_AT = "1998-01-12"
DEFAULT_BAD_MODEL_AT = "1998-02-16"
BAD_MODEL_ACTOR = "demo: injected bad model"


@dataclass(frozen=True)
class TimelineConfig:
    """What the replay runs: which weeks, how often it retrains on schedule, what it injects.

    Args:
        start: first window's start (a date); the feature store holds only the data before it.
        weeks: how many weekly windows; None runs to the end of the data.
        every: scheduled retrain cadence in weeks (the first week always trains); 0: only the first.
        retrain_on: lowest drift severity at which ``drift_watch`` retrains ("minor" or "major").
        drift_at: start of the week whose events get the injected drift; None: no drift event.
        bad_model_at: start of the week after whose runs a bad model is promoted; None: none.
        epochs: training epochs budget of every retrain (None: the settings').
        seed: seed of the injections.
    """

    start: str = DEFAULT_START
    weeks: int | None = None
    every: int = 8
    retrain_on: str = "major"
    drift_at: str | None = DEFAULT_DRIFT_AT
    bad_model_at: str | None = DEFAULT_BAD_MODEL_AT
    epochs: int | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimelineConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def refit_of(summary: dict[str, Any] | None) -> int | None:
    """The version that serves after the week's promotion when it is a refit of the judged one (else None)."""
    served, judged = (summary or {}).get("served_version"), (summary or {}).get("version")
    return served if served is not None and served != judged else None


@dataclass(frozen=True)
class WeekResult:
    """What happened on one week of the replay (read back from the cycle folder)."""

    window: str
    rows: int
    drift: str
    drifted: tuple[str, ...]
    trained_by: str | None  # "schedule" | "drift" | None
    version: int | None
    promoted: bool
    challenger_ndcg: float | None
    served_ndcg: float | None
    served_version: int | None
    reverted: bool
    injected: tuple[str, ...] = ()
    reason: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step of the week (ingest, monitor, ...)
    refit_version: int | None = None  # what serves after a promotion: the judged version refit through the week's end
    recent_pop_ndcg: float | None = None  # the fresh baselines on the week's users (served.json)
    ease_ndcg: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeekResult:
        return cls(**{**d, "drifted": tuple(d.get("drifted", ())), "injected": tuple(d.get("injected", ()))})


@dataclass(frozen=True)
class TimelineResult:
    """The replay's weeks, where its report is, and how long it took."""

    config: TimelineConfig
    weeks: tuple[WeekResult, ...]
    report: str
    mlflow_run_id: str
    seconds: float
    trains: int = field(default=0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict(), "weeks": [w.to_dict() for w in self.weeks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimelineResult:
        return cls(**{**d, "config": TimelineConfig.from_dict(d["config"]),
                      "weeks": tuple(WeekResult.from_dict(w) for w in d["weeks"])})



def window_starts(first: pd.Timestamp, last: pd.Timestamp, config: TimelineConfig) -> list[pd.Timestamp]:
    """The replayed weeks' starts: from ``config.start``, ``config.weeks`` of them or up to the last event.

    Example:
        >>> c = TimelineConfig(start="1998-04-06")
        >>> [str(s.date()) for s in window_starts(utc("1997-09-20"), utc("1998-04-22 23:00"), c)]
        ['1998-04-06', '1998-04-13', '1998-04-20']
    """
    begin = utc(config.start)
    if begin <= first:
        raise PipelineError(f"timeline start {begin.date()} leaves no history before it (data begins {first.date()})")
    if begin > last:
        raise PipelineError(f"timeline start {begin.date()} is after the last event ({last.date()})")
    if config.every < 0:
        raise PipelineError(f"timeline every must be >= 0 weeks, got {config.every}")
    n = config.weeks if config.weeks is not None else int((last - begin) // WEEK) + 1
    if n < 1:
        raise PipelineError(f"timeline weeks must be >= 1, got {n}")
    return [begin + WEEK * i for i in range(n)]


def scheduled(i: int, every: int) -> bool:
    """Whether the scheduled retrain runs on week ``i`` (the first week always; then every ``every``)."""
    return i == 0 or (every > 0 and i % every == 0)


def drift_event(week: pd.DataFrame, raw, seed: int) -> pd.DataFrame:
    """The week's events with a strong drift injected: a taste change, a popularity shift, inflated ratings.

    Uses ``recsys_retrain.simulate`` on the week joined with its side features, and returns
    the core event columns (one row per user, item and second, as ingest requires).
    """
    from recsys_retrain import simulate
    from recsys_retrain.data.load import RawData

    joined = simulate.base_log(RawData(week, raw.users, raw.items))
    items = simulate.catalogue(simulate.base_log(raw))
    injectors = [simulate.taste_change(0.5), simulate.popularity_shift(0.3), simulate.rating_inflation(0.5)]
    drifted = simulate.inject(joined, injectors, seed, items)[["user_id", "item_id", "timestamp", "rating"]]
    # a re-targeted row can land on an item the user rated in the same second: keep one such event
    return drifted.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)


def corrupt_item_tower(model, seed: int):
    """A copy of a ``Recommender`` whose item-side embedding tables are random, each at its trained table's own scale.

    Every item table (id, genre, decade, popularity), not the id table alone: a model
    that leans on the popularity and genre features (a lightly trained one does) would
    barely notice a random id table, and the injection must be a fault the monitor can
    see.
    """
    import torch

    bad = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in bad.model.item_ebc.embedding_bags.values():
            scale = float(table.weight.std()) or 1.0
            table.weight.copy_(torch.randn(table.weight.shape, generator=generator) * scale)
    return bad


def inject_bad_model(settings: Settings, start: pd.Timestamp, seed: int) -> int | None:
    """Registers the champion with randomised item embeddings and promotes it by hand; returns its version.

    Its window tag is ``start/start`` (trained on data before ``start``, judged on
    nothing), so it never reuses the version a cycle registered for the week.
    """
    from recsys_retrain.registry import candidates, promotion
    from recsys_retrain.registry.aliases import CHAMPION

    model = candidates.load_model(settings, CHAMPION)
    if model is None:
        log.warning("no champion to corrupt on %s: no bad model injected", start.date())
        return None
    window = f"{start.isoformat()}/{start.isoformat()}"
    candidate = candidates.log_candidate(
        corrupt_item_tower(model, seed), settings=settings, window=window,
        params={"injected": "item embeddings randomised"}, metrics={}, tags={"injected": "bad_model"},
    )
    promotion.promote(settings, candidate.version, reason="injected bad model: item embeddings randomised, promoted past the gate",
                      actor=BAD_MODEL_ACTOR)
    return candidate.version


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def week_result(
    run_dir: Path, window: str, trained_by: str | None, injected: list[str], timings: dict[str, float]
) -> WeekResult:
    """One week's outcome from the files its DAG runs wrote into the cycle folder."""
    trigger, summary = _read(run_dir / "trigger.json") or {}, _read(run_dir / "summary.json") if trained_by else None
    monitor, served = _read(run_dir / "monitor.json") or {}, _read(run_dir / "served.json") or {}
    drift = _read(run_dir / "drift" / "drift.json") or {}
    verdict = drift.get("verdict", {})
    reverted = bool(monitor.get("reverted"))
    reason = (summary or {}).get("reason") or (monitor.get("reason") if reverted else "") or trigger.get("reason", "")
    return WeekResult(
        window=window,
        rows=int(verdict.get("current_rows", 0)),
        drift=trigger.get("severity", verdict.get("severity", "none")),
        drifted=tuple(s["name"] for s in verdict.get("signals", []) if s.get("drifted")),
        trained_by=trained_by,
        version=(summary or {}).get("version"),
        promoted=bool((summary or {}).get("promoted")),
        challenger_ndcg=(summary or {}).get("challenger_ndcg"),
        served_ndcg=served.get("ndcg"),
        served_version=served.get("version"),
        reverted=reverted,
        injected=tuple(injected),
        reason=reason,
        seconds=round(sum(timings.values()), 2),
        timings={k: round(v, 2) for k, v in timings.items()},
        refit_version=refit_of(summary),
        recent_pop_ndcg=served.get("recent_pop_ndcg"),
        ease_ndcg=served.get("ease_ndcg"),
    )


def _timed(timings: dict[str, float], what: str, fn, *args, **kwargs) -> Any:
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timings[what] = timings.get(what, 0.0) + time.perf_counter() - started


def _run(dag, what: str, timings: dict[str, float], settings: Settings, **kwargs) -> None:
    """One ``dag.test()`` run, timed into ``timings[what]``; a run that does not succeed stops the replay.

    The error names the failed task and its error line, as the tasks' failure callback
    recorded them (``recsys_retrain.alerts``).
    """
    from recsys_retrain.alerts import failures

    run = _timed(timings, what, dag.test, **kwargs)
    if str(run.state) == "success":
        return
    failed = failures(settings, dag.dag_id, run.run_id)
    if failed:
        last = failed[-1]
        raise PipelineError(f"{dag.dag_id} ({what}) failed at task {last['task_id']}: {last['error']}")
    tasks = sorted(ti.task_id for ti in run.get_task_instances() if str(ti.state) in ("failed", "upstream_failed"))
    raise PipelineError(f"{dag.dag_id} ({what}) ended {run.state} (tasks: {', '.join(tasks) or 'none failed'})")


def replay(settings: Settings, raw, config: TimelineConfig, progress: bool = True) -> TimelineResult:
    """Replays ``raw`` week by week through the DAGs (see the module docstring); returns every week's outcome.

    The caller has reset the home (no champion from a later replay) and migrated the
    Airflow database. Writes the report and logs it with ``timeline.json`` to MLflow.
    """
    from tqdm import tqdm

    from recsys_retrain.airflow_local import load_dag, quiet_libraries
    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.data.load import RawData
    from recsys_retrain.data.store import read_events

    started = time.perf_counter()
    inter = raw.interactions
    starts = window_starts(inter["timestamp"].min(), inter["timestamp"].max(), config)
    stored = read_events(settings.feature_repo)
    if stored.empty or stored["timestamp"].max() >= starts[0]:  # rebuild unless it holds exactly the prefix
        bootstrap_feature_repo(RawData(inter[inter["timestamp"] < starts[0]], raw.users, raw.items), settings.feature_repo)
    dags = {name: load_dag(name, settings) for name in ("ingest", "champion_monitor", "drift_watch", "retrain")}
    quiet_libraries()  # again: importing Airflow installs its own handlers
    events_dir = settings.home / "timeline" / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    cycle_params = {"epochs": config.epochs} if config.epochs else {}
    weeks, trains = [], 0
    bar = tqdm(starts, desc="timeline", unit="week", disable=not progress)
    for i, begin in enumerate(bar):
        timings: dict[str, float] = {}
        end = begin + WEEK
        window = f"{begin.isoformat()}/{end.isoformat()}"
        run_dir = settings.runs_dir / f"{begin:%Y%m%d}-{end:%Y%m%d}"
        injected: list[str] = []
        events = inter[(inter["timestamp"] >= begin) & (inter["timestamp"] < end)]
        if config.drift_at and utc(config.drift_at) == begin:
            events = drift_event(events, raw, config.seed)
            injected.append("drift")
        path = events_dir / f"{begin:%Y%m%d}.parquet"
        write_parquet(events, path)
        bar.set_postfix_str(f"{begin.date()} ingest")
        _run(dags["ingest"], "ingest", timings, settings, run_conf={"events": str(path)})
        bar.set_postfix_str(f"{begin.date()} monitor")
        _run(dags["champion_monitor"], "monitor", timings, settings,
             run_conf={"window_end": end.isoformat(), "refresh_report": False})  # drawn once, after the last week
        bar.set_postfix_str(f"{begin.date()} drift")
        _run(dags["drift_watch"], "drift_watch", timings, settings, run_conf={"window_end": end.isoformat(), "retrain_on": config.retrain_on,
                                                      **cycle_params})
        trained_by = "drift" if (run_dir / "summary.json").exists() else None
        if trained_by is None and scheduled(i, config.every):
            bar.set_postfix_str(f"{begin.date()} retrain")
            _run(dags["retrain"], "retrain_scheduled", timings, settings, logical_date=end.to_pydatetime(),
                 run_conf={"window_start": begin.isoformat(), "window_end": end.isoformat(), **cycle_params})
            trained_by = "schedule"
        trains += trained_by is not None
        if config.bad_model_at and utc(config.bad_model_at) == begin:
            version = _timed(timings, "inject", inject_bad_model, settings, begin, config.seed)
            if version is not None:
                injected.append(f"bad model v{version}")
        weeks.append(week_result(run_dir, window, trained_by, injected, timings))
    bar.close()
    return finish(settings, config, weeks, trains, time.perf_counter() - started)


def finish(settings: Settings, config: TimelineConfig, weeks: list[WeekResult], trains: int, seconds: float) -> TimelineResult:
    """Writes ``timeline.json`` and the report, and logs both to an MLflow run of the model's experiment.

    The report is the production one (``recsys_retrain.monitoring.report.production_report``:
    the monitoring runs the DAGs logged, the registry history, the cycle folders), with
    the replay's injected events marked.
    """
    from recsys_retrain.monitoring.report import production_report
    from recsys_retrain.report import Report, log_report

    out = settings.home / "timeline"
    partial = TimelineResult(config, tuple(weeks), "", "", round(seconds, 1), trains)
    write_json(partial.to_dict(), out / "timeline.json")
    built = production_report(settings, out_dir=out / "report", injected={w.window: list(w.injected) for w in weeks})
    report = Report(Path(built["html"]), tuple(Path(p) for p in built["figures"]))
    run_id = log_report(settings, report, extra={"timeline.json": out / "timeline.json"},
                        metrics={"weeks": len(weeks), "trains": trains, "seconds": seconds})
    result = TimelineResult(config, tuple(weeks), str(report.html), run_id, round(seconds, 1), trains)
    write_json(result.to_dict(), out / "timeline.json")
    return result
