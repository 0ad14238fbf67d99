"""Refit through the window's end: what serves after a promotion has seen the window it was judged on.

A cycle judges a challenger trained on the data before its window ``W`` on ``W``
itself, so the version the gate passes has never seen ``W``: promoted as it is, it
starts serving one to three weeks stale. On the promote path the pipeline refits it
through ``W``'s end before the ``champion`` alias moves (``train.refit``):

- ``"warm"``: continue from the gated challenger's weights (``train(init=...)``, rows
  carried over by raw id, ``recsys_retrain.train.warm_start``) on ``W`` plus the
  ``train.refit_recent_days`` before it, ``train.refit_epochs`` epochs at
  ``train.refit_rate_scale`` of the gated plan's starting rates;
- ``"scratch"``: the gated recipe (its plan's rates, batch size and recency weighting,
  the gated run's epoch count) on the history and ``W``, static: no scheduler and no
  validation split, as nothing later than ``W`` is there to steer by;
- ``"off"``: the gated challenger serves.

Catalogue: the refit ranks the catalogue the gated challenger ranks, the cycle's
catalogue at ``W``'s start. It holds every item of the item profile (the data stage
adds an item when its first batch is ingested), so items first seen in ``W`` are in
it with their features as of ``W``'s start; an item missing from it is skipped in
training (``training_examples`` keeps catalogue items only) and becomes rankable with
the next cycle's catalogue.

:func:`sanity_check` stands between the refit and the promotion: finite weights, and
its NDCG@K on ``W`` not short of the gated challenger's by more than
``gate.refit_tolerance``. ``W`` is in-sample for the refit, so this is a sanity check
(did the refit break?), not an evaluation: the gate's evidence remains the gated
challenger's. Both are plain functions of frames and files (no registry), which
``recsys_retrain.cycle.refit`` wraps for the DAG and the backtest calls directly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_retrain.errors import DataError, PipelineError
from recsys_retrain.io import write_parquet
from recsys_retrain.model import Recommender
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import Settings, TrainSettings

MODES = ("warm", "scratch", "off")
DATA_FILE = "data.parquet"  # the refit's training data, in its folder of the cycle


@dataclass(frozen=True)
class RefitResult:
    """A refit's model and what it cost.

    Attributes:
        checkpoint: the refit's ``model.pt`` (the gated checkpoint itself for ``"off"``).
        epochs: epochs trained (0 for ``"off"``).
        seconds: wall time of the refit's training (0 for ``"off"``).
        mode: ``"warm"``, ``"scratch"`` or ``"off"``.
        data_end: the newest interaction the model has seen, ISO (the window's newest
            for a refit, the history's newest for ``"off"``); the cycle records the
            window's end, which is no earlier.
        data_start: the oldest interaction of the refit's own training data, ISO (a warm
            refit has seen the gated challenger's data before it too).
        rows: interactions the refit trained on (0 for ``"off"``).
    """

    checkpoint: str
    epochs: int
    seconds: float
    mode: str
    data_end: str
    data_start: str = ""
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SanityResult:
    """Whether a refit may serve, and why (NDCGs are in-sample for the refit: a check, not an evaluation)."""

    ok: bool
    reason: str
    refit_ndcg: float
    gated_ndcg: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_of(plan: dict[str, Any] | None) -> SchedulePlan | None:
    """The gated run's SchedulePlan from the calibrate step's payload (``plan.json``) or a bare plan dict; None: static."""
    if not plan:
        return None
    inner = plan.get("plan") if "policy" in plan else plan
    return SchedulePlan.from_dict(inner) if inner else None


def refit_settings(train: TrainSettings, plan: SchedulePlan | None, mode: str, epochs: int) -> TrainSettings:
    """The train section of a refit, ``epochs`` long: a scratch refit follows the gated plan (rates, batch size,
    recency weighting); a warm one takes the train section's rates scaled by ``refit_rate_scale``.

    A plan's starting rates are what its rate probe raced to (up to x8 of the rules' rates) for a run from
    scratch; a warm refit starting from trained weights with fresh optimizer state at a quarter of those
    moved too far: in bench/backtest.py (MovieLens-100K, 20 weeks) drift + adaptive then served 0.2792
    NDCG@10 against 0.2812 with the train section's rates (-0.0019 against never, 95% CI [-0.0046, -0.0001]).

    Example:
        >>> t = refit_settings(TrainSettings(dense_lr=0.01, sparse_lr=0.04), None, "warm", 2)
        >>> t.dense_lr, t.sparse_lr, t.epochs
        (0.0025, 0.01, 2)
    """
    base = {"dense_lr": train.dense_lr, "sparse_lr": train.sparse_lr, "batch_size": train.batch_size,
            "recency_half_life": train.recency_half_life}
    if plan is not None and mode != "warm":
        base = {"dense_lr": plan.dense_lr, "sparse_lr": plan.sparse_lr, "batch_size": plan.batch_size,
                "recency_half_life": plan.recency_half_life}
    if mode == "warm":
        base["dense_lr"] *= train.refit_rate_scale
        base["sparse_lr"] *= train.refit_rate_scale
    return train.model_copy(update={**base, "epochs": int(epochs)})


def gated_epochs(gated: Path, plan: SchedulePlan | None, train: TrainSettings) -> int:
    """Epochs behind the gated challenger's weights, from ``trace.json`` beside its checkpoint.

    The scheduler's best epoch when it kept the best weights, else the epochs run; without
    a trace, the plan's budget (or the train section's epochs).
    """
    trace_path = Path(gated).parent / "trace.json"
    if trace_path.exists():
        trace = json.loads(trace_path.read_text())
        best = (trace.get("controller") or {}).get("best_epoch")
        if best:
            return int(best)
        if trace.get("epochs"):
            return len(trace["epochs"])
    return plan.max_epochs if plan is not None else train.epochs


def refit_model(
    history: pd.DataFrame,
    window: pd.DataFrame,
    catalogue: pd.DataFrame,
    gated: Path,
    out_dir: Path,
    settings: Settings,
    mode: str,
    plan: dict | None = None,
) -> RefitResult:
    """Refits the gated challenger through the window's end; writes ``out_dir/data.parquet`` and ``out_dir/model.pt``.

    Args:
        history: the interactions before the window (what the gated challenger trained on).
        window: the window's interactions (what it was judged on).
        catalogue: the catalogue the gated challenger ranks (see the module docstring).
        gated: the gated challenger's ``model.pt``.
        out_dir: the refit's folder (the cycle's ``refit/``); an interrupted refit resumes there.
        settings: ``train.refit_*`` and the train section.
        mode: ``"warm"``, ``"scratch"`` or ``"off"`` (usually ``settings.train.refit``).
        plan: the gated run's plan (``plan.json``'s payload or a SchedulePlan dict); None: it was static.

    Returns:
        RefitResult; for ``"off"``, the gated checkpoint with 0 epochs.

    Raises:
        PipelineError: an unknown mode, or a refit whose weights went non-finite (never written).
        DataError: an empty window.
    """
    if mode not in MODES:
        raise PipelineError(f"refit mode {mode!r}: must be one of {', '.join(MODES)}")
    if mode == "off":
        return RefitResult(str(gated), 0, 0.0, "off", _iso(history["timestamp"].max()),
                           _iso(history["timestamp"].min()), 0)
    if window.empty:
        raise DataError("refit: the window holds no interactions")
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.loop import train as train_model

    started = time.perf_counter()
    schedule = plan_of(plan)
    t = settings.train
    gated_model = load_checkpoint(Path(gated))
    data = pd.concat([history, window], ignore_index=True)
    if mode == "warm":
        # trains on the window and the days before it; everything earlier still feeds the features (history bags,
        # popularity snapshots and prior), as it does when the model serves
        since = window["timestamp"].min() - pd.Timedelta(days=t.refit_recent_days)
        train_settings, init = refit_settings(t, schedule, mode, t.refit_epochs), gated_model
    else:
        since, init = None, None
        train_settings = refit_settings(t, schedule, mode, gated_epochs(Path(gated), schedule, t))
    out_dir = Path(out_dir)
    trained = data if since is None else data[data["timestamp"] >= since]
    write_parquet(trained, out_dir / DATA_FILE)
    # the served blend with recent popularity stays the gated model's: nothing after the window is left to fit it on
    result = train_model(data, catalogue, out_dir, train_settings, progress=False, init=init, train_from=since,
                         blend=float(getattr(gated_model, "blend", 0.0)))
    return RefitResult(
        result.checkpoint, len(result.epoch_losses), time.perf_counter() - started, mode,
        _iso(window["timestamp"].max()), _iso(trained["timestamp"].min()), len(trained),
    )


def sanity_check(
    refit: Recommender, gated: Recommender, history: pd.DataFrame, window: pd.DataFrame, settings: Settings
) -> SanityResult:
    """Whether the refit may serve: finite weights, and its NDCG@K on the window within tolerance of the gated one's.

    The window is in-sample for the refit (it trained on it), so its score there should
    be the higher one; falling short of the gated challenger's by more than
    ``gate.refit_tolerance`` (a relative shortfall) means the refit broke. This is a
    sanity check, not an evaluation: the gate's evidence on the window is the gated
    challenger's, and the refit is judged on the next window like any champion.

    Args:
        refit: the refit model.
        gated: the gated challenger.
        history: interactions before the window (excluded from ranking, as in the evaluation).
        window: the window both are scored on.
        settings: ``eval.k``, ``gate.head_share`` and ``gate.refit_tolerance``.

    Returns:
        SanityResult; ``ok`` False names the failed condition with its numbers.
    """
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.train.distributed import all_finite

    k, tolerance = settings.eval.k, settings.gate.refit_tolerance
    if not all_finite(refit):
        return SanityResult(False, "the refit has non-finite weights: the gated challenger serves", math.nan, math.nan)
    refit_ndcg = _mean(user_metrics(refit, history, window, k, settings.gate.head_share).ndcg)
    gated_ndcg = _mean(user_metrics(gated, history, window, k, settings.gate.head_share).ndcg)
    note = "(in-sample for the refit: a sanity check, not an evaluation)"
    if math.isnan(gated_ndcg):
        return SanityResult(True, f"weights finite; no window user to compare the two on {note}", refit_ndcg, gated_ndcg)
    if not math.isfinite(refit_ndcg):
        return SanityResult(False, f"the refit's NDCG@{k} on the window is not finite: the gated challenger serves",
                            refit_ndcg, gated_ndcg)
    floor = gated_ndcg * (1 - tolerance)
    if refit_ndcg < floor:
        return SanityResult(
            False,
            f"the refit's NDCG@{k} on the window, {refit_ndcg:.4f}, is short of the gated challenger's {gated_ndcg:.4f} "
            f"by more than gate.refit_tolerance {tolerance:g} (floor {floor:.4f}) {note}: the gated challenger serves",
            refit_ndcg, gated_ndcg,
        )
    return SanityResult(
        True,
        f"weights finite; the refit's NDCG@{k} on the window {refit_ndcg:.4f} vs the gated challenger's "
        f"{gated_ndcg:.4f}, within gate.refit_tolerance {tolerance:g} {note}",
        refit_ndcg, gated_ndcg,
    )


def _mean(values) -> float:
    return float(values.mean()) if len(values) else math.nan


def _iso(ts) -> str:
    return pd.Timestamp(ts).isoformat() if pd.notna(ts) else ""
