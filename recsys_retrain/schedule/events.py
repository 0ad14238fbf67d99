"""Scheduler events: every change the scheduler makes, with the signal that caused it.

An event is the unit of explanation. The report draws one marker per event on the
convergence curves, MLflow keeps them with the run, and a user can read why a rate
moved at step 1,234 without rerunning anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from recsys_retrain.records import json_float, lenient_from_dict


@dataclass(frozen=True)
class ScheduleEvent:
    """One scheduler decision.

    Attributes:
        step: optimisation step at which the change took effect.
        epoch: epoch of that step (0-based).
        stage: the controller's stage after the decision (warmup, explore, refine, settle).
        action: what was done (e.g. ``lr_up``, ``lr_down``, ``stage``, ``rollback``,
            ``weight_decay_up``, ``momentum_down``, ``batch_size``, ``stop``, ``restore_best``).
        trigger: the signal that caused it (e.g. ``validation_plateau``, ``curvature_jump``).
        value: the signal's value when it fired (None when the trigger is not numeric).
        threshold: the threshold it crossed.
        changes: name -> (old, new) of every hyperparameter the decision changed.
        reason: one sentence a person can read.
    """

    step: int
    epoch: int
    stage: str
    action: str
    trigger: str
    value: float | None = None
    threshold: float | None = None
    changes: dict[str, tuple[float, float]] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changes"] = {k: [json_float(a), json_float(b)] for k, (a, b) in self.changes.items()}
        d["value"], d["threshold"] = json_float(self.value), json_float(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleEvent:
        changes = {k: (float(a), float(b)) for k, (a, b) in d.get("changes", {}).items()}
        return lenient_from_dict(cls, {**d, "changes": changes})
