"""Training a cycle's challenger: which part of the history trains, steers and fits the blend; warm or scratch.

What ``recsys_retrain.cycle.train`` runs under its window lock: the adaptive plan's
validation split (:func:`schedule_split`), the served blend's holdout, a warm start's
span, one process or torchrun, and the knowledge base's new record. Kept apart from
the cycle's steps so that each module stays about one job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recsys_retrain.io import utc, write_parquet
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings

if TYPE_CHECKING:
    from recsys_retrain.champion import KnownChampion


def knowledge_base(s: Settings):
    """The scheduler's knowledge base of past runs, in this pipeline's MLflow."""
    from recsys_retrain.schedule.knowledge import KnowledgeBase

    return KnowledgeBase(tracking_uri=s.mlflow_uri, experiment=f"{s.model_name}-schedule-kb", k=s.schedule.kb_neighbours)


def schedule_split(
    history: pd.DataFrame, share: float, *, cold_users: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training part and the latest ``share`` of the history (by time), which steers the scheduler.

    Validation rows are kept only for items seen in the training part, and for users
    seen there too unless ``cold_users`` (the served blend is fit on every user, as the
    gate scores a window).
    """
    cut = history["timestamp"].quantile(1 - share)
    fit, later = history[history["timestamp"] <= cut], history[history["timestamp"] > cut]
    keep = later["item_id"].isin(fit["item_id"])
    if not cold_users:
        keep &= later["user_id"].isin(fit["user_id"])
    return fit, later[keep]


@dataclass
class TrainingInputs:
    """What a challenger trains on: the fit part, the scheduler's validation, the blend's holdout, a warm start."""

    history: pd.DataFrame
    catalogue: pd.DataFrame
    fit: pd.DataFrame
    later: pd.DataFrame | None  # steers the adaptive scheduler
    tail: pd.DataFrame | None  # fits the served blend
    since: pd.Timestamp | None  # a warm update trains from then on; the history before it only feeds the features
    schedule: Any  # SchedulePlan | None
    init: Any  # the champion a warm start continues from, or None
    warm_from: int | None


def training_inputs(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, start: str | None,
                    champion: KnownChampion | None = None) -> TrainingInputs:
    """Splits the cycle's history for training (plan's validation share, blend holdout, warm-start span)."""
    from recsys_retrain.champion import warm_init
    from recsys_retrain.schedule.plan import SchedulePlan

    history, catalogue = pd.read_parquet(p.history), pd.read_parquet(p.catalogue)
    schedule = SchedulePlan.from_dict(plan["plan"]) if plan and plan.get("plan") else None
    init, warm_from = warm_init(s, plan, champion)
    since = None
    if init is not None and schedule.history_days is not None:
        since = utc(start) - timedelta(days=schedule.history_days)
    span = history if since is None else history[history["timestamp"] >= since]
    fit, later, tail = history, None, None
    if schedule is not None or s.train.blend_holdout:
        head, newest = schedule_split(span, s.schedule.validation_share, cold_users=True)
        head = head if since is None else pd.concat([history[history["timestamp"] < since], head], ignore_index=True)
        warm = newest[newest["user_id"].isin(head["user_id"])]  # the scheduler steers on the users it trains
        if s.train.blend_holdout and not newest.empty:
            fit, tail = head, newest
            later = warm if schedule is not None and not warm.empty else None
        elif schedule is not None and not warm.empty:
            fit, later = head, warm
    return TrainingInputs(history, catalogue, fit, later, tail, since, schedule, init, warm_from)


def worker_files(p: CyclePaths, inputs: TrainingInputs) -> tuple[Path, list[str]]:
    """Writes what the torchrun workers read into the cycle folder; returns their history file and extra arguments.

    Every node of a multi-node run and the GPU pod read these files, so they live in the
    cycle folder (a shared volume), never in the task's memory.
    """
    extra, source = [], p.history
    if inputs.fit is not inputs.history:
        source = p.root / "schedule_fit.parquet"
        write_parquet(inputs.fit, source)
    if inputs.schedule is not None:
        extra = ["--plan", str(p.plan)]
        if inputs.later is not None:
            val_path = p.root / "schedule_validation.parquet"
            write_parquet(inputs.later, val_path)
            extra += ["--validation", str(val_path)]
    if inputs.tail is not None:
        write_parquet(inputs.tail, p.root / "blend_holdout.parquet")
        extra += ["--blend-holdout", str(p.root / "blend_holdout.parquet")]
    if inputs.since is not None:
        extra += ["--train-from", inputs.since.isoformat()]
    if inputs.init is not None:
        import torch

        init_path = p.root / "warm_init.pt"
        torch.save(inputs.init, init_path)
        extra += ["--init", str(init_path)]
    return source, extra


def train_challenger(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, start: str,
           champion: KnownChampion | None = None) -> dict[str, Any]:
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.train.loop import train as train_model

    inputs = training_inputs(p, s, plan, start, champion)
    schedule, fit, later = inputs.schedule, inputs.fit, inputs.later
    validate = None
    if schedule is not None and later is not None:
        k = schedule.validation_k  # the plan's steering cut-off, deeper than the served one (see ScheduleSettings)
        # per-user values: the rate probe compares candidates user by user; the metric is their mean
        validate = lambda model: user_metrics(model, fit, later, k).ndcg  # noqa: E731
    if s.train.launched:
        from recsys_retrain.train.launch import train_distributed

        source, extra = worker_files(p, inputs)
        result = train_distributed(source, p.catalogue, p.model_dir, s, extra_args=extra)
    else:
        result = train_model(fit, inputs.catalogue, p.model_dir, s.train, progress=False, validate=validate,
                             plan=schedule, init=inputs.init, blend_holdout=inputs.tail, train_from=inputs.since)
    return finish_challenger(p, s, plan, inputs, result)


def finish_challenger(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, inputs: TrainingInputs,
                      result) -> dict[str, Any]:
    """The train step's result from the trainer's (``TrainResult``): the span trained on, a warm start's source.

    An adaptive run is added to the knowledge base. The GPU pod path calls it on the
    pod's ``train_result.json`` (``recsys_retrain.cycle.collect_train``).
    """
    if inputs.schedule is not None and s.schedule.knowledge_base and result.best_validation is not None:
        remember(s, plan, result)
    fit, since = inputs.fit, inputs.since
    first = fit["timestamp"].min() if since is None else max(since, fit["timestamp"].min())
    return {**result.to_dict(), "data_start": pd.Timestamp(first).isoformat() if pd.notna(first) else "",
            **({"warm_from": inputs.warm_from} if inputs.warm_from else {})}


def prepare_worker(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, start: str | None) -> list[str]:
    """The worker arguments of a training launched elsewhere (the GPU pod): writes its settings and input files first.

    Everything the pod needs is a file in the cycle folder that the arguments name:
    ``train_settings.json`` (the train section), the plan (``--plan``), the fit part,
    the scheduler's validation part, the blend holdout and a warm start's champion.
    """
    from recsys_retrain.train.launch import RESULT_FILE, train_args, write_train_settings

    source, extra = worker_files(p, training_inputs(p, s, plan, start))
    settings_file = write_train_settings(s, p.model_dir)
    (p.model_dir / RESULT_FILE).unlink(missing_ok=True)  # an earlier try's result must not pass for this one
    return [*train_args(source, p.catalogue, p.model_dir, settings_file), *extra]


def collect_worker(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, start: str | None) -> dict[str, Any]:
    """The train step's result from what the pod's rank 0 wrote (``train_result.json``), as ``train_challenger``'s."""
    from recsys_retrain.errors import PipelineError
    from recsys_retrain.train.launch import RESULT_FILE
    from recsys_retrain.train.loop import TrainResult

    path = p.model_dir / RESULT_FILE
    if not path.exists():
        raise PipelineError(f"the training pod left no {path}: see the pod's log in the train task")
    result = TrainResult.from_dict(json.loads(path.read_text()))
    return finish_challenger(p, s, plan, training_inputs(p, s, plan, start), result)


def remember(s: Settings, plan: dict[str, Any], result) -> None:
    """Adds a finished adaptive run to the knowledge base (profile features -> converged rates -> outcome)."""
    from recsys_retrain.schedule.knowledge import Record, explore_rates, features

    rates = explore_rates(json.loads(Path(result.trace).read_text()))
    if rates is None:
        return
    record = Record(
        features(plan.get("profile", {})), rates[0], rates[1], best_epoch=int(result.best_epoch),
        epochs=len(result.epoch_losses), validation=float(result.best_validation), regime=Path(result.checkpoint).parent.parent.name,
    )
    knowledge_base(s).add(record)
