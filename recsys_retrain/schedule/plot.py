"""The convergence curves of one run with every scheduler event on them (a PNG for MLflow and the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_retrain.io import write_with

EVENT_COLOURS = {"lr_down": "tab:blue", "lr_up": "tab:green", "rollback": "tab:red", "stop": "black",
                 "weight_decay_up": "tab:purple", "momentum_down": "tab:brown", "batch_size": "tab:orange"}


def curves(trace: dict[str, Any], path: Path) -> Path:
    """Loss per step, validation per epoch and both rates per step; one marked, annotated line per event.

    Args:
        trace: the trace.json dict of a run.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = trace["steps"]
    fig, (loss_ax, val_ax, lr_ax) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    loss_ax.plot(steps["step"], steps["loss"], lw=0.6, color="tab:grey")
    loss_ax.set_ylabel("training loss")
    per_epoch = max(len(steps["step"]) // max(len(trace["epochs"]), 1), 1)
    ends = [(e["epoch"] + 1) * per_epoch for e in trace["epochs"]]
    vals = [e["validation"] for e in trace["epochs"]]
    if any(v is not None for v in vals):
        val_ax.plot(ends, vals, "o-", color="tab:blue", ms=3)
    val_ax.set_ylabel("validation NDCG@10")
    lr_ax.plot(steps["step"], steps["dense_lr"], label="dense lr")
    lr_ax.plot(steps["step"], steps["sparse_lr"], label="sparse lr")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.legend(fontsize=7, loc="upper right")
    for event in trace["events"]:
        if event["action"] == "stage" and event["step"] == 0:
            continue
        colour = EVENT_COLOURS.get(event["action"], "tab:cyan")
        for ax in (loss_ax, val_ax, lr_ax):
            ax.axvline(event["step"], color=colour, lw=0.8, ls="--", alpha=0.8)
        label = event["action"] if event["action"] != "stage" else f"-> {event['stage']}"
        changed = ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in event["changes"].items() if a is not None and b is not None)
        val_ax.annotate(f"{label} ({event['trigger']})" + (f"\n{changed}" if changed else ""), (event["step"], 1.0),
                        xycoords=("data", "axes fraction"), fontsize=6, rotation=90, va="top", ha="right", color=colour)
    fig.suptitle("training curves and scheduler events", fontsize=10)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=90))  # the temp name keeps .png: savefig's format
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
