"""Safe-fail: the rate mechanics under the adaptive scheduler, and rate changes that can be undone.

The rate of every optimiser group is ``initial_lr × warm-up × base decay × control``
(``rules.rate_factor``); ``RollbackScheduler`` holds ``control`` and every event, and
makes each change so that it can be taken back. ``AdaptiveScheduler`` (``controller``)
builds on it and decides when to change what.

Before each change the controller snapshots the model and optimiser states. If the next
validation is worse than before the change by more than ``plan.rollback_tol``, it
restores the snapshot and retries with half the change (in log scale). A non-finite loss
restores the latest snapshot at once and halves the rate; so does a collapse (validation
below half of the best with no change pending).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from recsys_retrain.schedule.convergence import Convergence
from recsys_retrain.schedule.events import ScheduleEvent
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.rules import Components, Limits, bounded, clamp_control, lowered, rate_factor, retry_factor
from recsys_retrain.schedule.snapshot import Snapshot


@dataclass
class _Pending:
    """A change awaiting its verdict at the next validation cycle."""

    action: str
    trigger: str
    factor: float
    before: float  # validation before the change
    snapshot: bytes
    retries: int = 0


class RollbackScheduler:
    """Sets every group's rate from the control multiplier, records each change, and undoes the ones that hurt.

    The base of ``AdaptiveScheduler``, which documents the arguments; on its own it
    changes nothing (no decisions, no ``step()``).

    Attributes:
        control: the controller's bounded rate multiplier.
        stage: ``warmup``, ``explore``, ``refine`` or ``settle``.
        events: every change, in order.
        cues: what the run has shown so far (``Convergence``).
        rollbacks: changes undone and non-finite losses recovered from.
        explore_control: the multiplier when exploring ended (None: still exploring).
    """

    def __init__(
        self,
        optimizers: Mapping[str, Any],
        plan: SchedulePlan,
        *,
        model: torch.nn.Module | None,
        steps_per_epoch: int | None,
        components: Components,
        limits: Limits,
    ) -> None:
        self.optimizers = dict(optimizers)
        self.plan, self.components, self.limits = plan, components, limits
        self.snapshot = Snapshot(model, self.optimizers) if model is not None else None
        self.steps_per_epoch = steps_per_epoch
        for group in self._groups():
            group.setdefault("initial_lr", group["lr"])
        self.cues = Convergence()
        self.step_count = 0
        self.epoch = 0
        self.stage = "warmup" if plan.warmup_steps > 0 else "explore"
        self.control = 1.0
        self.cooldown = 0
        self.events: list[ScheduleEvent] = []
        self.rollbacks = 0
        self.explore_control: float | None = None  # control multiplier when exploring ended
        self._pending: _Pending | None = None
        self._last_good: bytes | None = None
        self._best_snapshot: bytes | None = None
        self._apply()
        if self.snapshot is not None:
            self._last_good = self.snapshot.save()  # so a NaN in the first epoch has a state to return to

    # -- the torch.optim.lr_scheduler surface -------------------------------------------------

    def get_last_lr(self) -> list[float]:
        """Current rate of every group, optimisers in insertion order."""
        return [float(g["lr"]) for g in self._groups()]

    def lrs(self) -> dict[str, float]:
        """Current rate of each optimiser's first group, by name."""
        return {name: float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()}

    @property
    def best(self) -> float:
        """The best validation so far (-inf before the first)."""
        return self.cues.best

    @property
    def best_epoch(self) -> int:
        """The epoch of the best validation, 0-based (-1 before the first)."""
        return self.cues.best_epoch

    def state_dict(self) -> dict[str, Any]:
        """The rate mechanics' part of ``AdaptiveScheduler.state_dict``, as plain values."""
        return {
            "plan": self.plan.to_dict(),
            "components": asdict(self.components),
            "limits": asdict(self.limits),
            "steps_per_epoch": self.steps_per_epoch,
            "step_count": self.step_count,
            "epoch": self.epoch,
            "stage": self.stage,
            "control": self.control,
            "cooldown": self.cooldown,
            "events": [e.to_dict() for e in self.events],
            "rollbacks": self.rollbacks,
            "explore_control": self.explore_control,
            **self.cues.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict()``, then sets every group's rate from it."""
        self.plan = SchedulePlan.from_dict(state["plan"])
        self.components, self.limits = Components(**state["components"]), Limits(**state["limits"])
        self.steps_per_epoch = state["steps_per_epoch"]
        self.step_count, self.epoch, self.stage = state["step_count"], state["epoch"], state["stage"]
        self.control, self.cooldown = state["control"], state["cooldown"]
        self.events = [ScheduleEvent.from_dict(e) for e in state["events"]]
        self.rollbacks, self.explore_control = state["rollbacks"], state["explore_control"]
        self.cues.load_state_dict(state)
        self._apply()

    # -- changes on behalf of other controllers, and the snapshots for a checkpoint ------------

    def scale_rates(
        self, factor: float, action: str, trigger: str, value: float, threshold: float,
        extra: dict[str, tuple[float, float]], reason: str,
    ) -> None:
        """Multiplies every rate by ``factor`` on behalf of another controller (e.g. the batch-size rule)."""
        old = self.lrs()
        self.control = clamp_control(self.control * factor, self.limits)
        self._apply()
        self._event(action, trigger, value, threshold, {**extra, **self._rate_changes(old)}, reason)

    def record(
        self, action: str, trigger: str, value: float, threshold: float, changes: dict[str, tuple[float, float]], reason: str,
    ) -> None:
        """Records a change another controller made (precision, accumulation) as one of this run's events."""
        self._event(action, trigger, value, threshold, changes, reason)

    def snapshots(self) -> dict[str, bytes | None]:
        """The in-memory snapshots (best and last good weights), for an epoch checkpoint."""
        pending = asdict(self._pending) if self._pending is not None else None
        return {"last_good": self._last_good, "best": self._best_snapshot, "pending": pending}

    def load_snapshots(self, saved: dict[str, bytes | None] | None) -> None:
        if saved:
            self._last_good, self._best_snapshot = saved.get("last_good"), saved.get("best")
            self._pending = _Pending(**saved["pending"]) if saved.get("pending") else None

    # -- changes that can be undone ------------------------------------------------------------

    def _change_rate(
        self, factor: float, trigger: str, value: float, threshold: float, validation: float, why: str,
        stage: str | None = None, retries: int = 0,
    ) -> None:
        """Multiplies ``control`` by ``factor`` (bounded) and keeps what to return to if ``validation`` then falls."""
        factor = bounded(factor, self.plan.max_change)
        new_control = clamp_control(self.control * factor, self.limits)
        if new_control == self.control and stage is None:
            return
        old = self.lrs()
        if self.stage == "explore" and stage not in (None, "explore") and self.explore_control is None:
            self.explore_control = self.control
        if self.snapshot is not None and self.components.rollback:
            self._pending = _Pending("rate", trigger, factor, validation, self._last_good or self.snapshot.save(), retries)
        self.control = new_control
        self.cooldown = self.plan.cooldown
        self.cues.since_improvement = 0
        self._apply()
        action = "lr_up" if factor > 1 else "lr_down"
        self._event(action, trigger, value, threshold, self._rate_changes(old), f"{why}: rate x{factor:.2f}", stage=stage)

    def _judge_pending(self, validation: float) -> bool:
        """Undoes the last change when validation fell by more than ``rollback_tol``; True when it did."""
        pending, self._pending = self._pending, None
        if pending is None or validation >= lowered(pending.before, self.plan.rollback_tol):
            return False
        old = self.lrs()
        self.snapshot.restore(pending.snapshot)
        self.control /= pending.factor
        smaller = retry_factor(pending.factor)
        self.rollbacks += 1
        self._apply()
        self._event("rollback", "validation_drop", validation, lowered(pending.before, self.plan.rollback_tol),
                    self._rate_changes(old, every=True),
                    f"validation fell from {pending.before:.4f} to {validation:.4f} after {pending.trigger}; "
                    "restored the weights from before the change")
        self.cues.validations[-1] = pending.before
        if pending.retries < 1 and smaller is not None:
            self._change_rate(smaller, pending.trigger, validation, pending.before, pending.before,
                              "retrying with half the change", retries=pending.retries + 1)
        else:
            self.cooldown = self.plan.cooldown
        return True

    def _collapsed(self, validation: float) -> bool:
        """Validation fell below ``limits.collapse`` of the best with no change to blame: restore, halve the rate.

        A rate that trained well can still blow a model up a few epochs later without a
        NaN (the ranking falls to near random and stays there); that is the same
        instability as a non-finite loss, so it gets the same answer: the best weights
        back and half the rate. True when it did.
        """
        lowest = lowered(self.best, 1 - self.limits.collapse)
        if self._best_snapshot is None or not self.components.rollback or validation >= lowest:
            return False
        self._last_good = self._best_snapshot
        self.cooldown = self.plan.cooldown
        self._fall_back(self._best_snapshot, "validation_collapse", validation, lowest,
                        f"validation fell to {validation:.4f}, below {self.limits.collapse:.0%} of the best "
                        f"({self.best:.4f}); restored the weights of epoch {self.best_epoch + 1} and halved the rate")
        self.cues.validations[-1] = self.best
        return True

    def recover(self, trigger: str, value: float) -> None:
        """Restores the latest snapshot and halves the rate (a non-finite loss or weights)."""
        saved = self._last_good or self._best_snapshot if self.snapshot is not None and self.components.rollback else None
        what = "restored the last snapshot" if saved else "no snapshot yet: skipped the step"
        self._fall_back(saved, trigger, value, None, f"{trigger.replace('_', ' ')} ({value}); {what} and halved the rate")

    def _fall_back(self, saved: bytes | None, trigger: str, value: float, threshold: float | None, reason: str) -> None:
        """Restores ``saved`` (when there is one), halves the rate and records the rollback."""
        old = self.lrs()
        if saved:
            self.snapshot.restore(saved)
        self.control = max(self.control * self.limits.cut_factor, self.limits.min_control)
        self.rollbacks += 1
        self._apply()
        self._event("rollback", trigger, value, threshold, self._rate_changes(old, every=True), reason)

    def finish(self) -> bool:
        """Restores the best validated weights if the current ones are worse; True when it did."""
        validations = self.cues.validations
        if self._best_snapshot is None or not validations or validations[-1] >= self.best:
            return False
        self.snapshot.restore(self._best_snapshot)
        self._apply()
        self._event("restore_best", "best_validation", self.best, validations[-1], {},
                    f"restored the weights of epoch {self.best_epoch + 1} (validation {self.best:.4f})")
        return True

    # -- rates and events ------------------------------------------------------------------------

    def _apply(self) -> None:
        factor = rate_factor(self.stage, self.step_count, self.control, self.plan, self.limits, self.steps_per_epoch)
        for group in self._groups():
            group["lr"] = group["initial_lr"] * factor

    def _rate_changes(self, old: dict[str, float], every: bool = False) -> dict[str, tuple[float, float]]:
        """``{name}_lr -> (old, new)`` of each optimiser whose rate changed since ``old`` (``every``: of all)."""
        return {f"{k}_lr": (old[k], v) for k, v in self.lrs().items() if every or v != old[k]}

    def _groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def _event(
        self, action: str, trigger: str, value: float | None, threshold: float | None,
        changes: dict[str, tuple[float, float]], reason: str, stage: str | None = None,
    ) -> None:
        if stage is not None:
            self.stage = stage
        self.events.append(
            ScheduleEvent(self.step_count, self.epoch, self.stage, action, trigger, value, threshold, changes, reason)
        )
