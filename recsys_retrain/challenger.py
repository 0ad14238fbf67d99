"""Training a cycle's challenger: which part of the history trains, steers and fits the blend; warm or scratch.

What ``recsys_retrain.cycle.train`` runs under its window lock: the adaptive plan's
validation split (:func:`schedule_split`), the served blend's holdout, a warm start's
span, one process or torchrun, and the knowledge base's new record. Kept apart from
the cycle's steps so that each module stays about one job.
"""

from __future__ import annotations

import json
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


def train_challenger(p: CyclePaths, s: Settings, plan: dict[str, Any] | None, start: str,
           champion: KnownChampion | None = None) -> dict[str, Any]:
    from recsys_retrain.champion import warm_init
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.schedule.plan import SchedulePlan
    from recsys_retrain.train.loop import train as train_model

    history, catalogue = pd.read_parquet(p.history), pd.read_parquet(p.catalogue)
    schedule = SchedulePlan.from_dict(plan["plan"]) if plan and plan.get("plan") else None
    init, warm_from = warm_init(s, plan, champion)
    since = None  # a warm update trains on its span; the history before it only feeds the features
    if init is not None and schedule.history_days is not None:
        since = utc(start) - timedelta(days=schedule.history_days)
    span = history if since is None else history[history["timestamp"] >= since]
    fit, later, tail, validate = history, None, None, None  # later steers the scheduler, tail fits the blend
    if schedule is not None or s.train.blend_holdout:
        head, newest = schedule_split(span, s.schedule.validation_share, cold_users=True)
        head = head if since is None else pd.concat([history[history["timestamp"] < since], head], ignore_index=True)
        warm = newest[newest["user_id"].isin(head["user_id"])]  # the scheduler steers on the users it trains
        if s.train.blend_holdout and not newest.empty:
            fit, tail = head, newest
            later = warm if schedule is not None and not warm.empty else None
        elif schedule is not None and not warm.empty:
            fit, later = head, warm
    if schedule is not None and later is not None:
        k = schedule.validation_k  # the plan's steering cut-off, deeper than the served one (see ScheduleSettings)
        # per-user values: the rate probe compares candidates user by user; the metric is their mean
        validate = lambda model: user_metrics(model, fit, later, k).ndcg  # noqa: E731
    if s.train.processes > 1:
        from recsys_retrain.train.launch import train_distributed

        extra, source = [], p.history
        if fit is not history:
            source = p.root / "schedule_fit.parquet"
            write_parquet(fit, source)
        if schedule is not None:
            extra = ["--plan", str(p.plan)]
            if later is not None:
                val_path = p.root / "schedule_validation.parquet"
                write_parquet(later, val_path)
                extra += ["--validation", str(val_path)]
        if tail is not None:
            write_parquet(tail, p.root / "blend_holdout.parquet")
            extra += ["--blend-holdout", str(p.root / "blend_holdout.parquet")]
        if since is not None:
            extra += ["--train-from", since.isoformat()]
        if init is not None:
            import torch

            init_path = p.root / "warm_init.pt"
            torch.save(init, init_path)
            extra += ["--init", str(init_path)]
        result = train_distributed(source, p.catalogue, p.model_dir, s, extra_args=extra)
    else:
        result = train_model(fit, catalogue, p.model_dir, s.train, progress=False, validate=validate, plan=schedule,
                             init=init, blend_holdout=tail, train_from=since)
    if schedule is not None and s.schedule.knowledge_base and result.best_validation is not None:
        remember(s, plan, result)
    first = fit["timestamp"].min() if since is None else max(since, fit["timestamp"].min())
    return {**result.to_dict(), "data_start": pd.Timestamp(first).isoformat() if pd.notna(first) else "",
            **({"warm_from": warm_from} if warm_from else {})}


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
