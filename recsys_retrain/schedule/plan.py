"""SchedulePlan: the starting hyperparameters of a run and the controller's thresholds, each with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from recsys_retrain.records import lenient_from_dict

DECAY_STYLES = ("cosine", "linear", "none")


@dataclass(frozen=True)
class Reason:
    """Why one field of a plan has its value: the rule or past runs that set it."""

    field: str
    value: Any
    why: str


@dataclass(frozen=True)
class SchedulePlan:
    """What ``calibrate`` hands the trainer and the ``AdaptiveScheduler``.

    Rates are starting values; the controller multiplies them by its warm-up ramp,
    the base decay and its own bounded adjustments. Thresholds are relative changes
    of the validation metric (0.01 = 1%).

    Attributes:
        dense_lr: Adam rate of the dense layers.
        sparse_lr: Adagrad rate of the embedding tables (fused in TorchRec).
        weight_decay: starting L2 on the dense layers (the controller may raise it).
        beta1: Adam's first-moment coefficient (the controller may lower it).
        batch_size: examples per step (the resource controller may change it).
        warmup_steps: length of the linear warm-up ramp, at most; it ends early once
            gradient norms settle.
        decay: base decay over the epoch budget: cosine, linear or none.
        decay_floor: the base decay's final multiplier (gentler decay: higher floor).
        max_epochs: epoch budget; the controller usually stops earlier.
        min_epochs: no stop before this many epochs.
        patience: validation cycles without improvement that make a plateau.
        improve_cycles: consecutive improving cycles that count as sustained improvement.
        plateau_tol: relative gain below which a cycle does not count as improvement.
        rollback_tol: relative loss of validation after a change that undoes it.
        max_change: largest multiplicative change of a rate in one decision.
        cooldown: validation cycles after a change before the next one.
        smoothing: EMA weight of a new validation value in the plateau cues (1: no smoothing);
            per-epoch ranking metrics are noisy, and a plateau read off noise cuts rates too early.
        probe_rates: rate multipliers the first epoch tries side by side, each for an equal
            share of it from the same starting weights; the run goes on from the one that
            validates best (empty: no probe).
        probe_tol: relative shortfall from the probe's best mean validation within which
            candidates tie and the higher rate ranks first (the readings cannot tell them apart).
        probe_z: in the probe's last round, with per-user validation values, a finalist
            within ``probe_tol`` that a paired comparison puts more than this many standard
            errors behind the leader is not tied (None: the tolerance alone).
        validation_k: cut-off of the validation NDCG the controller reads (the trainer's
            ``validate`` callback computes it; see ``ScheduleSettings.validation_k``).
        recency_half_life: days after which an interaction counts half in an epoch's
            draw of examples (None: every interaction once); set under drift, when old
            interactions describe tastes that no longer hold.
        warm_start: continue from the champion's weights (``recsys_retrain.schedule.start``)
            rather than from a fresh initialisation. The trainer does not read it: the caller
            passes the champion to ``train(init=...)``.
        history_days: days of the most recent history the run trains on (None: all of it);
            set for a warm start, whose caller trims the history to it.
        source: "rules" or "knowledge_base".
        reasons: one Reason per field that was set from the data or past runs.
    """

    dense_lr: float = 0.01
    sparse_lr: float = 0.05
    weight_decay: float = 0.0
    beta1: float = 0.9
    batch_size: int = 512
    warmup_steps: int = 50
    decay: str = "cosine"
    decay_floor: float = 0.1
    max_epochs: int = 16
    min_epochs: int = 3
    patience: int = 2
    improve_cycles: int = 2
    plateau_tol: float = 0.005
    rollback_tol: float = 0.02
    max_change: float = 2.0
    cooldown: int = 1
    smoothing: float = 1.0
    probe_rates: tuple[float, ...] = ()
    probe_tol: float = 0.15
    probe_z: float | None = None
    validation_k: int = 50
    recency_half_life: float | None = None
    warm_start: bool = False
    history_days: float | None = None
    source: str = "rules"
    reasons: tuple[Reason, ...] = ()

    def __post_init__(self) -> None:
        if self.decay not in DECAY_STYLES:
            raise ValueError(f"decay must be one of {', '.join(DECAY_STYLES)}, got {self.decay!r}")
        if self.max_change <= 1:
            raise ValueError(f"max_change must be > 1, got {self.max_change}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if not 0 < self.decay_floor <= 1:
            raise ValueError(f"decay_floor must be in (0, 1], got {self.decay_floor}")
        if self.validation_k < 1:
            raise ValueError(f"validation_k must be >= 1, got {self.validation_k}")
        if self.recency_half_life is not None and not self.recency_half_life > 0:
            raise ValueError(f"recency_half_life must be > 0 or None, got {self.recency_half_life}")
        if self.history_days is not None and not self.history_days > 0:
            raise ValueError(f"history_days must be > 0 or None, got {self.history_days}")
        if self.probe_z is not None and self.probe_z < 0:
            raise ValueError(f"probe_z must be >= 0 or None, got {self.probe_z}")
        if any(not m > 0 for m in self.probe_rates):
            raise ValueError(f"probe_rates must be positive multipliers, got {self.probe_rates}")

    def with_reason(self, name: str, value: Any, why: str) -> SchedulePlan:
        """A copy with ``name`` set to ``value`` and the reason recorded (a later reason for a field replaces it)."""
        kept = tuple(r for r in self.reasons if r.field != name)
        return replace(self, **{name: value}, reasons=(*kept, Reason(name, value, why)))

    def why(self, name: str) -> str | None:
        return next((r.why for r in self.reasons if r.field == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The plan as ``plan.json`` holds it (tuples become lists, so a dict compares equal to its file)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SchedulePlan:
        return lenient_from_dict(
            cls, {**d, "reasons": tuple(Reason(**{**r, "value": _frozen(r["value"])}) for r in d.get("reasons", ())),
                  "probe_rates": tuple(d.get("probe_rates", ()))}
        )


def _frozen(value: Any) -> Any:
    """A reason's value as the plan holds it: JSON lists back to tuples (the plan is frozen)."""
    return tuple(value) if isinstance(value, list) else value
