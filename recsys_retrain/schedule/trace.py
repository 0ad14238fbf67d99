"""TrainingTrace: the curves of one run (per step and per epoch), its scheduler events and plan.

Written as ``trace.json`` next to the checkpoint and logged to MLflow with the run; the
report draws the convergence curves from it and marks every event on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys_retrain.io import write_json
from recsys_retrain.records import json_float

STEP_FIELDS = ("step", "epoch", "loss", "dense_grad_norm", "embedding_grad_norm", "dense_lr", "sparse_lr")


class Trace:
    """Accumulates a run's curves; ``to_dict()`` is the trace.json schema.

    Schema: ``{"steps": {field: [...] for field in STEP_FIELDS}, "epochs": [{"epoch",
    "loss", "validation", "dense_lr", "sparse_lr", "batch_size"}], "events":
    [ScheduleEvent.to_dict()], "plan": SchedulePlan.to_dict() | None, "controller":
    AdaptiveScheduler.summary() | None}``.
    """

    def __init__(self, plan: dict[str, Any] | None = None) -> None:
        self.steps: dict[str, list[float]] = {f: [] for f in STEP_FIELDS}
        self.epochs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.plan = plan
        self.controller: dict[str, Any] | None = None

    def add_step(self, signals: Any) -> None:
        """Appends one step's signals (any object with the STEP_FIELDS as attributes)."""
        for f in STEP_FIELDS:
            self.steps[f].append(json_float(getattr(signals, f)))

    def add_epoch(self, epoch: int, loss: float, validation: float | None, optimizer: Any, batch_size: int) -> None:
        lrs = {name: float(opt.param_groups[0]["lr"]) for name, opt in getattr(optimizer, "optimizers", [])}
        self.epochs.append(
            {"epoch": epoch, "loss": json_float(loss), "validation": json_float(validation),
             "dense_lr": lrs.get("dense"), "sparse_lr": lrs.get("sparse"), "batch_size": batch_size}
        )

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "events": self.events, "plan": self.plan,
                "controller": self.controller}

    def load(self, d: dict[str, Any]) -> None:
        self.steps, self.epochs, self.events, self.plan = d["steps"], d["epochs"], d["events"], d["plan"]
        self.controller = d.get("controller")

    def write(self, path: Path) -> Path:
        """Writes the trace atomically (``recsys_retrain.io``: a temp file, then a rename)."""
        return write_json(self.to_dict(), path, indent=None)


def run_params(plan_path: Path) -> dict[str, Any]:
    """The plan's values as run parameters (``schedule.*``), so runs can be compared by schedule in MLflow."""
    if not plan_path.exists():
        return {"schedule.policy": "static"}
    payload = json.loads(plan_path.read_text())
    plan = payload.get("plan") or {}
    keep = ("dense_lr", "sparse_lr", "batch_size", "max_epochs", "warmup_steps", "decay", "decay_floor", "source")
    return {"schedule.policy": payload.get("policy", "static"), **{f"schedule.{k}": plan[k] for k in keep if k in plan}}


def run_metrics(trained: dict[str, Any]) -> dict[str, float]:
    """Scheduler outcome of the run: events, rollbacks, best validation and its epoch."""
    if not trained.get("trace") or not Path(trained["trace"]).exists():
        return {}
    trace = json.loads(Path(trained["trace"]).read_text())
    out = {"scheduler_events": float(len(trace["events"]))}
    out["scheduler_rollbacks"] = float(sum(e["action"] == "rollback" for e in trace["events"]))
    if trained.get("best_validation") is not None:
        out["best_validation_ndcg"] = float(trained["best_validation"])
        out["best_epoch"] = float(trained["best_epoch"])
    return out
