"""The convergence curves of one run with every scheduler event on them (a PNG for MLflow and the report).

An event is a marker on the loss curve at its step, coloured by its action, with a
legend of the actions: no text is written on the axes, so labels of events a few
steps apart cannot overlap or run out of the panel. An event's detail (trigger, value
against threshold, old -> new values, reason) is in ``trace.json`` and in the report's
hover text and event tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from recsys_retrain.io import write_with

EVENT_COLOURS = {"lr_down": "tab:blue", "lr_up": "tab:green", "rollback": "tab:red", "stop": "black",
                 "weight_decay_up": "tab:purple", "momentum_down": "tab:brown", "batch_size": "tab:orange",
                 "stage": "tab:olive"}
OTHER_COLOUR = "tab:cyan"


def loss_at(steps: dict[str, list], step: int) -> float | None:
    """The finite training loss logged nearest to ``step`` (None when no finite loss was logged).

    Example:
        >>> loss_at({"step": [0, 1, 2, 3], "loss": [4.0, None, 2.0, 1.0]}, 1)
        4.0
    """
    points = [(abs(s - step), s, v) for s, v in zip(steps["step"], steps["loss"]) if v is not None and math.isfinite(v)]
    return min(points)[2] if points else None


def log_ticks(values: list[float | None]) -> list[float]:
    """Tick values for a log axis over ``values``: 1, 2 and 5 of each decade, or the decades alone when more than six.

    Both plotting libraries label minor digits of a decade (3, 4, ...) that crowd on a short rate axis.

    Example:
        >>> log_ticks([0.05, 0.0125]), log_ticks([1e-5, 0.1])
        ([0.02, 0.05], [1e-05, 0.0001, 0.001, 0.01, 0.1])
    """
    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not positive:
        return []
    lo, hi = min(positive) * (1 - 1e-9), max(positive) * (1 + 1e-9)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [float(f"{m}e{d}") for d in decades for m in (1, 2, 5) if lo <= float(f"{m}e{d}") <= hi]
    if len(ticks) > 6:
        ticks = [t for t in ticks if f"{t:e}".startswith("1")]
    return ticks[:: math.ceil(len(ticks) / 6)] if ticks else [min(positive)]


def rate_axis(ax, steps: dict[str, list]) -> None:
    """``ax`` as the log axis of both learning rates, labelled at :func:`log_ticks` only."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ticks = log_ticks(list(steps["dense_lr"]) + list(steps["sparse_lr"]))
    ax.set_yscale("log")
    if ticks:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
    ax.yaxis.set_minor_formatter(NullFormatter())


def mark_events(ax, trace: dict[str, Any]) -> list:
    """Each event of ``trace`` as a marker on ``ax``'s loss curve at its step; returns one legend handle per action.

    An event whose step has no finite loss sits at the bottom of the axes.
    """
    from matplotlib.lines import Line2D

    bottom = ax.get_ylim()[0]
    handles: dict[str, Line2D] = {}
    for event in trace["events"]:
        action = event.get("action", "event")
        colour = EVENT_COLOURS.get(action, OTHER_COLOUR)
        y = loss_at(trace["steps"], event["step"])
        ax.plot([event["step"]], [bottom if y is None else y], "o", ms=5, color=colour, mec="white", mew=0.6, zorder=5,
                clip_on=False)
        handles.setdefault(action, Line2D([], [], ls="", marker="o", ms=5, color=colour, label=f"event: {action}"))
    return list(handles.values())


def curves_figure(trace: dict[str, Any]):
    """The figure of :func:`curves`: loss per step with the events, validation per epoch, both rates per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = trace["steps"]
    fig, (loss_ax, val_ax, lr_ax) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    loss_ax.plot(steps["step"], steps["loss"], lw=0.6, color="tab:grey", label="training loss")
    loss_ax.set_ylabel("training loss")
    handles = mark_events(loss_ax, trace)
    if handles:
        loss_ax.legend(handles=handles, fontsize=6, loc="upper right", ncol=min(len(handles), 4))
    per_epoch = max(len(steps["step"]) // max(len(trace["epochs"]), 1), 1)
    ends = [(e["epoch"] + 1) * per_epoch for e in trace["epochs"]]
    vals = [e["validation"] for e in trace["epochs"]]
    if any(v is not None for v in vals):
        val_ax.plot(ends, vals, "o-", color="tab:blue", ms=3)
    val_ax.set_ylabel("validation NDCG@10")
    lr_ax.plot(steps["step"], steps["dense_lr"], label="dense lr")
    lr_ax.plot(steps["step"], steps["sparse_lr"], label="sparse lr")
    rate_axis(lr_ax, steps)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.legend(fontsize=7, loc="upper right")
    for event in trace["events"]:  # a faint line through the lower panels: what the event did to them
        for ax in (val_ax, lr_ax):
            ax.axvline(event["step"], color=EVENT_COLOURS.get(event.get("action"), OTHER_COLOUR), lw=0.6, ls="--", alpha=0.5)
    fig.suptitle("training curves; dots: scheduler events (their detail: trace.json, the report)", fontsize=10)
    fig.tight_layout()
    return fig


def curves(trace: dict[str, Any], path: Path) -> Path:
    """Loss per step with a marker per event, validation per epoch and both rates per step, as a PNG.

    Args:
        trace: the trace.json dict of a run.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fig = curves_figure(trace)
    import matplotlib.pyplot as plt

    try:
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=90))  # the temp name keeps .png: savefig's format
    finally:
        plt.close(fig)
    return path


def log_to_mlflow(trace: dict[str, Any], run_id: str, tracking_uri: str) -> None:
    """Per-epoch curves (loss, validation, rates, batch size) and the event count as MLflow metric histories."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    if client.get_metric_history(run_id, "curve.train_loss"):
        return  # a retried gate task: the curves are already there
    now = int(time.time() * 1000)
    metrics = []
    for e in trace["epochs"]:
        for key, name in (("loss", "curve.train_loss"), ("validation", "curve.validation_ndcg"),
                          ("dense_lr", "curve.dense_lr"), ("sparse_lr", "curve.sparse_lr"), ("batch_size", "curve.batch_size")):
            if e.get(key) is not None:
                metrics.append(Metric(name, float(e[key]), now, int(e["epoch"])))
    for i, event in enumerate(trace["events"]):
        metrics.append(Metric("scheduler.event_step", float(event["step"]), now, i))
    for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1,000 metrics
        client.log_batch(run_id, metrics=metrics[start : start + 900])
