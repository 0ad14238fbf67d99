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
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import file_lock, utc, write_json, write_parquet
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings, get_settings

if TYPE_CHECKING:
    from recsys_retrain.champion import KnownChampion

SEVERITY_ORDER = ("none", "minor", "major")
DEFAULT_RETRAIN_ON = "minor"

HISTORY_START = pd.Timestamp("1970-01-01", tz="UTC")
Overrides = dict[str, dict[str, Any]]


def with_overrides(settings: Settings, overrides: Overrides | None) -> Settings:
    """``settings`` with per-run overrides applied to its nested models, validated like the settings themselves.

    ``overrides`` maps a section to field values, e.g. ``{"train": {"epochs": 4},
    "gate": {"min_delta": 0.01}}`` (what a DAG run's Params become). An unknown
    section or field, or a value its field rejects, raises PipelineError with one line.
    """
    if not overrides:
        return settings
    from pydantic import BaseModel, ValidationError

    update = {}
    for section, values in overrides.items():
        current = getattr(settings, section, None)
        if not isinstance(current, BaseModel) or not isinstance(values, dict):
            sections = ", ".join(k for k, v in settings if isinstance(v, BaseModel))
            raise PipelineError(f"override {section!r}: not a settings section with fields (one of: {sections})")
        model = type(current)
        unknown = sorted(set(values) - set(model.model_fields))
        if unknown:
            raise PipelineError(f"override {section}.{unknown[0]}: no such setting (fields: {', '.join(model.model_fields)})")
        try:
            update[section] = model.model_validate({**current.model_dump(), **values})
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(part) for part in (section, *e["loc"]))
            raise PipelineError(f"override {field}={e['input']!r}: {e['msg']}") from None
    return settings.model_copy(update=update)


def window(
    end: str | None = None, days: int = 7, settings: Settings | None = None, overrides: Overrides | None = None
) -> dict[str, str]:
    """The window ``[end - days, end)``; without ``end``, the one ending after the newest stored day.

    What a data-aware DAG run checks when it has no data interval: the newest
    ``days`` of interactions in the feature store (``end`` is the midnight after the
    newest event, so the folder name is stable for a re-run on the same data).
    """
    from recsys_retrain.data.store import read_events

    s = with_overrides(settings or get_settings(), overrides)
    if days < 1:
        raise PipelineError(f"window: days must be >= 1, got {days}")
    if end is None:
        events = read_events(s.feature_repo)
        if events.empty:
            raise PipelineError(f"window: no interactions stored in {s.feature_repo}; ingest some first")
        t1 = events["timestamp"].max().floor("D") + timedelta(days=1)
    else:
        try:
            t1 = utc(end)
        except (ValueError, TypeError):
            raise PipelineError(f"window: end {end!r} is not a date or datetime") from None
    return {"start": (t1 - timedelta(days=days)).isoformat(), "end": t1.isoformat()}


def ingest(events: str, settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Appends a batch of events to the feature store; returns the counts and the newest window.

    Re-ingesting the same batch adds nothing (``added`` is 0), so a retried task is harmless.
    """
    from recsys_retrain.data.ingest import ingest as ingest_batch
    from recsys_retrain.paths import user_path

    s = with_overrides(settings or get_settings(), overrides)
    result = ingest_batch(user_path(events, s, "events"), s.feature_repo, s.data)
    return {**result.to_dict(), **{f"window_{k}": v for k, v in window(settings=s).items()}}


def pull(start: str, end: str, settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Pulls the history (``train.history_days`` before the window), the window and the catalogue; once per
    window and store state, shared by the DAGs that read the week (``recsys_retrain.data.pulled``)."""
    from recsys_retrain.data.pulled import earlier_pull, pull_key, remember_pull
    from recsys_retrain.data.store import item_catalogue, pull_window

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths.of(s, start, end)
    t0, t1 = utc(start), utc(end)
    key = pull_key(s.feature_repo, t0.isoformat(), t1.isoformat(), s.train.history_days, s.drift.reference_days)
    if (done := earlier_pull(p.root, key, [p.history, p.holdout, p.reference, p.catalogue])) is not None:
        return {**done, "run_dir": str(p.root)}  # this task's folder (a staged copy under an object store)
    history = pull_window(s.feature_repo, max(HISTORY_START, t0 - timedelta(days=s.train.history_days)), t0)
    holdout = pull_window(s.feature_repo, t0, t1)
    if holdout.empty:
        raise PipelineError(f"window {start}..{end} holds no interactions in the feature store: nothing to evaluate or train on")
    reference = history[history["timestamp"] >= t0 - timedelta(days=s.drift.reference_days)]
    write_parquet(history, p.history)
    write_parquet(holdout, p.holdout)
    write_parquet(reference, p.reference)
    write_parquet(item_catalogue(s.feature_repo, t0), p.catalogue)
    result = {"run_dir": str(p.root), "start": t0.isoformat(), "end": t1.isoformat(),
              "rows_history": len(history), "rows_window": len(holdout), "rows_reference": len(reference)}
    remember_pull(p.root, key, result)
    return result


def validate(pulled: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Validates history and window (bad rows go to quarantine files beside them) and profiles the window."""
    from recsys_retrain.data.validation import validate as validate_window
    from recsys_retrain.profile import profile

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    counts = {}
    for name, path in (("history", p.history), ("window", p.holdout), ("reference", p.reference)):
        frame = pd.read_parquet(path)
        clean = validate_window(frame, s.data, p.root / f"quarantine_{name}.parquet")
        write_parquet(clean, path)
        counts[f"bad_{name}"] = len(frame) - len(clean)
    prof = profile(pd.read_parquet(p.holdout), pd.read_parquet(p.reference), pulled["start"], pulled["end"])
    write_json(prof.to_dict(), p.profile)
    return {**pulled, **counts, "profile": str(p.profile)}


def drift(pulled: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Compares the window with the ``drift.reference_days`` before it on designed interaction signals.

    With a loadable champion, its score distribution on both windows is one more
    signal (prediction drift); without one the data signals decide alone. The check
    is added to the Evidently workspace as the window's snapshot (``monitoring.evidently``).
    """
    from recsys_retrain.drift.check import champion_scorer, check_drift
    from recsys_retrain.registry import candidates

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    scorer, current = None, candidates.champion(s)
    if current is not None:
        model, _ = candidates.try_load(s, current.version)
        scorer = champion_scorer(model) if model is not None else None
    report = check_drift(pd.read_parquet(p.reference), pd.read_parquet(p.holdout), p.drift_dir, s.drift, scorer)
    snapshot = None
    if s.monitoring.evidently and report.json_path:
        from recsys_retrain.drift.signals import SIGNALS, SCORE_SIGNAL
        from recsys_retrain.monitoring.workspace import add_check

        categorical = {sig.name: sig.categorical for sig in (*SIGNALS, SCORE_SIGNAL)}
        snapshot = add_check(s, report.to_dict(), categorical, f"{pulled['start']}/{pulled['end']}")
    return {
        "snapshot": snapshot,
        "severity": report.severity,
        "drifted_share": report.drifted_share,
        "html": report.html_path,
        "json": report.json_path,
        "drifted": list(report.drifted_signals),
        "reason": report.reason,
    }


def calibrate(
    pulled: dict[str, Any],
    drift_result: dict[str, Any] | None = None,
    settings: Settings | None = None,
    overrides: Overrides | None = None,
    champion: KnownChampion | None = None,
) -> dict[str, Any]:
    """The training schedule of this cycle, from the history's profile, the drift verdict and past runs.

    Writes ``plan.json`` (with every reason) into the cycle folder and returns it; with
    ``schedule.policy = "static"`` the plan is None and training uses the train section.
    With ``schedule.warm_start`` on and a loadable champion that has not seen this
    window, the plan also records warm start or scratch with its reasons
    (``recsys_retrain.schedule.start``), and ``champion`` names the version a warm
    start continues from (``recsys_retrain.champion.champion_info``); ``champion``, when
    given, stands in for the registry's (the backtest).
    """
    from recsys_retrain.profile import profile
    from recsys_retrain.schedule.calibrate import calibrate as make_plan

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    if s.schedule.policy == "static":
        write_json({"policy": "static", "plan": None}, p.plan)
        return {"policy": "static", "plan": None, "path": str(p.plan)}
    from recsys_retrain.challenger import knowledge_base, schedule_split

    fit, _ = schedule_split(pd.read_parquet(p.history), s.schedule.validation_share)
    prof = profile(fit).to_dict()
    kb = knowledge_base(s) if s.schedule.knowledge_base else None
    from recsys_retrain.champion import champion_info

    info = champion_info(s, fit, pd.read_parquet(p.catalogue), pulled["start"], champion) if s.schedule.warm_start else None
    plan = make_plan(prof, drift_result, kb, s.schedule, s.train, champion=info)
    payload = {"policy": "adaptive", "plan": plan.to_dict(), "profile": prof, "kb_records": len(kb) if kb else 0,
               "champion": info.to_dict() if info else None}
    write_json(payload, p.plan)
    return {**payload, "path": str(p.plan)}


def train(
    pulled: dict[str, Any],
    settings: Settings | None = None,
    overrides: Overrides | None = None,
    plan: dict[str, Any] | None = None,
    champion: KnownChampion | None = None,
) -> dict[str, Any]:
    """Trains the challenger on the history; returns the checkpoint path, losses and trace path.

    With an adaptive plan (the calibrate step's result), the latest part of the history
    is held out to steer the AdaptiveScheduler (early stop, rollback, best weights),
    and the run is added to the knowledge base. With ``train.blend_holdout`` (either
    policy) the same latest part fits the served blend with recent popularity. With
    ``train.processes > 1`` the run is launched with torchrun. A plan that chose a warm
    start trains from the champion it names (``train(init=...)``) on its ``history_days``
    before the window; the result then names it (``warm_from``); ``champion`` is the one
    calibrate was given, if it was. ``data_start`` is the first interaction trained on.

    One training per window at a time: ``retrain_scheduled`` and ``drift_watch`` may
    reach the same window together, so the second waits on the window's lock and then
    reuses the first's result (``trained.json``, marked ``reused``) when it was trained
    with the same settings and plan, or whenever the window's cycle has already been
    decided (``summary.json``): a re-run never trains into a registered version.
    """
    from recsys_retrain.challenger import train_challenger

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    done, key = p.root / "trained.json", {"train": s.train.model_dump(mode="json"), "plan": plan}
    with file_lock(p.root / ".train.lock"):
        if done.exists():
            previous = json.loads(done.read_text())
            if previous["key"] == json.loads(json.dumps(key, default=str)) or p.summary.exists():
                return {**previous["result"], "reused": str(done)}
        result = train_challenger(p, s, plan, pulled.get("start"), champion)
        write_json({"key": key, "result": result}, done)
    return result


def prepare_train(pulled: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None,
                  plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Kubernetes path's first step (``infra/airflow/gpu_train.py``): writes what the training pod reads, on the
    volume it mounts, and returns the pod's worker arguments; :func:`collect_train` then reads its result."""
    from recsys_retrain.challenger import prepare_worker

    s, p = with_overrides(settings or get_settings(), overrides), CyclePaths(Path(pulled["run_dir"]))
    return {"run_dir": str(p.root), "args": prepare_worker(p, s, plan, pulled.get("start"))}


def collect_train(pulled: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None,
                  plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Kubernetes path's last step: the pod's result as :func:`train` returns it (and ``trained.json``)."""
    from recsys_retrain.challenger import collect_worker

    s, p = with_overrides(settings or get_settings(), overrides), CyclePaths(Path(pulled["run_dir"]))
    result = collect_worker(p, s, plan, pulled.get("start"))
    write_json({"key": {"train": s.train.model_dump(mode="json"), "plan": plan}, "result": result}, p.root / "trained.json")
    return result


def evaluate(
    pulled: dict[str, Any], trained: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None
) -> dict[str, Any]:
    """Scores challenger and current champion per user, on the same window with the same exclusions.

    The per-user vectors go to a file in the cycle folder (the gate's bootstrap needs
    them); the XCom carries the means and the champion that was judged.
    """
    from recsys_retrain.champion import judged_in_place
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.registry import candidates
    from recsys_retrain.train.checkpoints import load_checkpoint

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    history, holdout = pd.read_parquet(p.history), pd.read_parquet(p.holdout)
    k, head = s.eval.k, s.gate.head_share
    challenger = user_metrics(load_checkpoint(Path(trained["checkpoint"])), history, holdout, k, head)
    champion, (current, model, champion_error) = None, candidates.comparator(s)
    if current is not None:
        current, model = judged_in_place(s, current, model, pulled)
        champion = user_metrics(model, history, holdout, k, head)
    write_json({
        "window": f"{pulled['start']}/{pulled['end']}",
        "champion_version": current.version if current else None,  # later gates pool windows of the same champion
        "challenger": challenger.to_dict(),
        "champion": champion.to_dict() if champion else None,
    }, p.per_user)
    return {
        "per_user": str(p.per_user),
        "challenger": challenger.reported(),
        "champion": champion.reported() if champion else None,
        "champion_version": current.version if current else None,
        "champion_error": champion_error,
    }


def gate(
    pulled: dict[str, Any],
    drift_result: dict[str, Any],
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The whole gate in one call: :func:`judge`, then :func:`refit` and :func:`promote`, or :func:`keep`.

    Returns ``summary.json``. What the CLI, the demo and the benchmarks run; the DAGs
    run the steps as tasks, with an ``@task.branch`` between them, so that the graph
    shows the decision.
    """
    s = with_overrides(settings or get_settings(), overrides)
    judged = judge(pulled, drift_result, trained, evaluated, settings=s)
    if not judged["promote"]:
        return keep(judged)
    return promote(judged, refit(pulled, trained, judged, settings=s), settings=s)


def judge(
    pulled: dict[str, Any],
    drift_result: dict[str, Any],
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Registers the challenger, runs the gate (``gate.policy``) and records its decision; nothing moves yet.

    The champion is the one evaluated before registering, so a retried gate task
    repeats the same decision instead of comparing the challenger with itself. The
    result carries ``promote`` (what the branch follows), the reason, and the power
    of the evidence: its minimum detectable difference (``mde``) and, when earlier
    windows were pooled, how many (``recsys_retrain.gating``).
    """
    from recsys_retrain import gating

    s = with_overrides(settings or get_settings(), overrides)
    return gating.judge(CyclePaths(Path(pulled["run_dir"])), pulled, drift_result, trained, evaluated, s)


def refit(
    pulled: dict[str, Any],
    trained: dict[str, Any],
    judged: dict[str, Any],
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The promote path's first step: refits the gated challenger through the window's end (``train.refit``).

    The refit is registered as its own version and serves if it passes its sanity
    check; otherwise the gated challenger serves and the reason is recorded
    (``recsys_retrain.refitting``). Returns what :func:`promote` needs (``served_version``)
    with the refit's numbers; a retry reuses ``refit.json``.
    """
    from recsys_retrain import refitting

    s = with_overrides(settings or get_settings(), overrides)
    return refitting.refit(CyclePaths(Path(pulled["run_dir"])), pulled, trained, judged, s)


def promote(
    judged: dict[str, Any],
    refitted: dict[str, Any] | None = None,
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The promote path's last step: ``champion`` moves to the refit (``refitted``, :func:`refit`'s result), ``previous``
    to the former champion; without ``refitted``, to the judged challenger. Writes ``summary.json``."""
    from recsys_retrain import gating

    return gating.promote(judged, with_overrides(settings or get_settings(), overrides), refitted)


def keep(judged: dict[str, Any]) -> dict[str, Any]:
    """The keep path: the champion stays; writes ``summary.json``."""
    from recsys_retrain import gating

    return gating.keep(judged)


def decided(judged: dict[str, Any]) -> dict[str, Any]:
    """The cycle's outcome, whichever path ran: its ``summary.json``."""
    return json.loads(CyclePaths(Path(judged["run_dir"])).summary.read_text())


def should_retrain(
    pulled: dict[str, Any],
    drift_result: dict[str, Any],
    retrain_on: str | None = None,
) -> dict[str, Any]:
    """Whether the drift verdict reaches the trigger level; records it as ``trigger.json`` in the cycle folder.

    ``retrain_on`` is the lowest severity that triggers a retrain ("minor" or "major";
    default "minor"). The verdict is written either way, so a stopped run still says why.
    """
    level = retrain_on or DEFAULT_RETRAIN_ON
    if level not in SEVERITY_ORDER[1:]:
        raise PipelineError(f"retrain_on must be one of {', '.join(SEVERITY_ORDER[1:])}, got {level!r}")
    severity = drift_result["severity"]
    retrain = SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(level)
    verdict = {
        "window": f"{pulled['start']}/{pulled['end']}",
        "severity": severity,
        "retrain_on": level,
        "retrain": retrain,
        "reason": f"drift {severity} {'reaches' if retrain else 'is below'} the trigger level {level}: {drift_result['reason']}",
    }
    write_json(verdict, CyclePaths(Path(pulled["run_dir"])).root / "trigger.json")
    return verdict


def monitor(pulled: dict[str, Any], settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Runs the auto-revert monitor on the cycle's window: champion vs previous, revert after enough worse windows.

    Reads the history and window the pull (and validate) steps wrote; records the
    RevertDecision as ``monitor.json`` in the cycle folder and returns it as a dict.
    Idempotent per window (see ``recsys_retrain.monitor.check_window``).
    """
    from recsys_retrain.monitor import check_window

    s = with_overrides(settings or get_settings(), overrides)
    p = CyclePaths(Path(pulled["run_dir"]))
    window_id = f"{pulled['start']}/{pulled['end']}"
    decision = check_window(s, pd.read_parquet(p.history), pd.read_parquet(p.holdout), window_id)
    result = {"window": window_id, **decision.to_dict()}
    write_json(result, p.root / "monitor.json")
    return result


def publish(settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Precomputes the champion's top-K for recently active users into the online store.

    Runs after a promotion and after the monitor: a new champion (a promotion, a revert)
    replaces every published list; the same champion refreshes the recently active
    users' lists (``recsys_retrain.serve.publish``).
    """
    from recsys_retrain.serve.publish import publish_champion

    return publish_champion(with_overrides(settings or get_settings(), overrides)).to_dict()


def record(
    pulled: dict[str, Any],
    dag_id: str,
    run_id: str,
    summary: dict[str, Any] | None = None,
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Logs this DAG run's monitoring run (``recsys_retrain.monitoring.runs``) and emits its alerts, whichever branch ran.

    ``summary`` is the gate's outcome when the run reached it (None when it stopped
    below the trigger, and for the monitor). A re-run for the same window updates the
    run and emits no event its run already carries.
    """
    from recsys_retrain.alerts import emit
    from recsys_retrain.monitoring.runs import log_run

    s = with_overrides(settings or get_settings(), overrides)
    if not s.monitoring.enabled:
        return {"mlflow_run_id": None, "alerts": []}
    logged = log_run(s, dag_id, run_id, Path(pulled["run_dir"]), summary)
    sent = [emit({**e, "dag_id": dag_id, "run_id": run_id}, s, logged["mlflow_run_id"])
            for e in logged["alerts"] if e["event"] not in logged["alerted"]]
    return {**logged, "alerts": [e["event"] for e in sent]}


def refresh_report(settings: Settings | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Rebuilds ``<home>/report/report.html`` from every week production logged (``retrain report`` without dates)."""
    from recsys_retrain.monitoring.report import production_report

    s = with_overrides(settings or get_settings(), overrides)
    result = production_report(s)
    return {"html": result["html"], "weeks": len(result["weeks"]), "seconds": result["seconds"]}
