"""Scheduler events: every change the scheduler makes, with the signal that caused it.

An event is the unit of explanation. The report draws one marker per event on the
convergence curves, MLflow keeps them with the run, and a user can read why a rate
moved at step 1,234 without rerunning anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


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
        d["changes"] = {k: [_finite(a), _finite(b)] for k, (a, b) in self.changes.items()}
        d["value"], d["threshold"] = _finite(self.value), _finite(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleEvent:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["changes"] = {k: (float(a), float(b)) for k, (a, b) in d.get("changes", {}).items()}
        return cls(**known)


def _finite(x: float | None) -> float | None:
    """JSON has no NaN/inf: a non-finite signal value (the NaN-loss trigger) is written as None."""
    if x is None or not math.isfinite(float(x)):
        return None
    return float(x)
