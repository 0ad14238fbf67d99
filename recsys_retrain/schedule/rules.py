"""The rules the in-run controller applies, as pure functions: signals and thresholds in, a rate or a decision out.

``AdaptiveScheduler`` (``controller``) holds a run's state and acts; the rules here only
read. Keeping them apart lets each be tested on its own numbers, without a model or
an optimiser, and lets a reader find every threshold the controller compares against
in one place: the data-dependent ones come from the ``SchedulePlan``, the fixed ones
from ``Limits``, and ``Components`` switches whole cues off for ablations.

Example:
    >>> plan = SchedulePlan(warmup_steps=4, max_epochs=2, decay="linear", decay_floor=0.5)
    >>> [round(rate_factor("warmup", step, 1.0, plan, Limits(), steps_per_epoch=4), 4) for step in range(4)]
    [0.1, 0.3047, 0.4813, 0.6297]
    >>> cues = Convergence()
    >>> cues.since_improvement = 3  # three cycles without a gain
    >>> explore_change(cues, SchedulePlan(patience=3), Limits(), Components()).stage
    'refine'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys_retrain.schedule.convergence import Convergence
from recsys_retrain.schedule.plan import SchedulePlan

STAGES = ("warmup", "explore", "refine", "settle")


@dataclass(frozen=True)
class Components:
    """Parts of the controller that can be switched off (for ablations)."""

    curvature: bool = True
    weight_decay: bool = True
    momentum: bool = True
    rollback: bool = True
    raise_rate: bool = True


@dataclass(frozen=True)
class Limits:
    """Thresholds of the controller that are not data-dependent (the plan holds those that are)."""

    warmup_start: float = 0.1  # first warm-up multiplier
    warmup_settle: float = 0.25  # |short/long - 1| of the gradient norm that ends warm-up early
    raise_factor: float = 1.5  # rate raise on sustained improvement (bounded by max_change)
    cut_factor: float = 0.5  # rate cut on a plateau or curvature jump (bounded by max_change)
    max_refine_cuts: int = 2
    curvature_jump: float = 3.0  # curvature EMA over its explore-stage reference
    min_consistency: float = 0.0  # mean cosine of successive gradients below this is erratic
    grad_spike: float = 5.0  # gradient norm over its long EMA that counts as a spike
    beta_factor: float = 0.9  # beta1 / momentum multiplier when gradients are erratic
    min_beta: float = 0.5
    weight_decay_start: float = 1e-5  # first weight decay when the plan starts without one
    weight_decay_factor: float = 3.0
    max_weight_decay: float = 1e-2
    collapse: float = 0.5  # validation below this share of the best, with no change pending, is a collapse
    max_gap_raises: int = 2  # returns to the best weights at a higher rate on a generalisation gap, per run
    min_control: float = 1e-3
    max_control: float = 8.0


@dataclass(frozen=True)
class RateChange:
    """A decision to multiply the controller's rate multiplier by ``factor``, and why.

    Attributes:
        factor: the multiplier asked for (the controller bounds it by ``plan.max_change``).
        trigger: the signal that fired (``validation_plateau``, ``curvature_jump``, ...).
        value: the signal's value.
        threshold: the threshold it crossed.
        why: the reason, for the event.
        stage: the stage to move to (None: stay).
    """

    factor: float
    trigger: str
    value: float
    threshold: float
    why: str
    stage: str | None = None


# -- rates -----------------------------------------------------------------------------------------


def rate_factor(
    stage: str, step: int, control: float, plan: SchedulePlan, limits: Limits, steps_per_epoch: int | None,
) -> float:
    """Multiplier of every group's ``initial_lr`` at ``step``: warm-up ramp x base decay x ``control``."""
    warm = warmup_ramp(step, plan, limits) if stage == "warmup" else 1.0
    return warm * base_decay(step, plan, steps_per_epoch) * control


def warmup_ramp(step: int, plan: SchedulePlan, limits: Limits) -> float:
    """Linear ramp from ``limits.warmup_start`` to 1 over ``plan.warmup_steps``."""
    ramp = min(step / max(plan.warmup_steps, 1), 1.0)
    return limits.warmup_start + (1 - limits.warmup_start) * ramp


def base_decay(step: int, plan: SchedulePlan, steps_per_epoch: int | None) -> float:
    """The plan's decay (``none``, ``linear`` or ``cosine``) down to ``decay_floor`` over the epoch budget.

    Example:
        >>> plan = SchedulePlan(max_epochs=1, decay="cosine", decay_floor=0.1)
        >>> [round(base_decay(step, plan, steps_per_epoch=4), 4) for step in range(5)]
        [1.0, 0.8682, 0.55, 0.2318, 0.1]
    """
    if plan.decay == "none" or not steps_per_epoch:
        return 1.0
    total = plan.max_epochs * steps_per_epoch
    t = min(step / max(total, 1), 1.0)
    floor = plan.decay_floor
    if plan.decay == "linear":
        return 1 - (1 - floor) * t
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def clamp_control(control: float, limits: Limits) -> float:
    """``control`` within ``[limits.min_control, limits.max_control]``."""
    return min(max(control, limits.min_control), limits.max_control)


def bounded(factor: float, bound: float) -> float:
    """``factor`` within ``[1 / bound, bound]`` (``plan.max_change`` per decision)."""
    return min(max(factor, 1 / bound), bound)


def retry_factor(factor: float) -> float | None:
    """Half a rejected change, in log scale (x4 -> x2, x0.5 -> x0.71); None when too small to matter."""
    smaller = math.copysign(abs(math.log(factor)) / 2, math.log(factor))
    return math.exp(smaller) if abs(smaller) > 1e-3 else None


def lowered(value: float, tol: float) -> float:
    """``value`` lowered by the relative tolerance ``tol`` (for metrics of either sign)."""
    return value - tol * abs(value)


# -- cues ------------------------------------------------------------------------------------------


def warmup_over(step: int, ratio: float, plan: SchedulePlan, limits: Limits) -> bool:
    """The ramp is done, or half done with the gradient norm settled (``ratio`` below ``limits.warmup_settle``)."""
    if step >= plan.warmup_steps:
        return True
    return step >= plan.warmup_steps // 2 and ratio < limits.warmup_settle


def curvature_jumped(cues: Convergence, limits: Limits) -> bool:
    """The last cycle's curvature median is over ``limits.curvature_jump`` times the explore-stage reference."""
    ref, median = cues.curvature_ref, cues.curvature_median
    return ref is not None and median is not None and ref > 0 and median > limits.curvature_jump * ref


def generalisation_gap(cues: Convergence, tol: float) -> bool:
    """Over the last three cycles the smoothed validation fell while the training loss fell, to below the best."""
    if len(cues.smoothed_history) < 3 or len(cues.train_losses) < 3:
        return False
    v, t = cues.smoothed_history[-3:], cues.train_losses[-3:]
    return v[2] < v[1] < v[0] and t[2] < t[1] < t[0] and v[2] < lowered(cues.best, tol)


# -- decisions -------------------------------------------------------------------------------------


def explore_change(cues: Convergence, plan: SchedulePlan, limits: Limits, components: Components) -> RateChange | None:
    """While exploring: a curvature jump or a plateau cuts the rate and moves to ``refine``; sustained improvement
    with consistent gradients raises it. None: no change."""
    if components.curvature and curvature_jumped(cues, limits):
        return RateChange(limits.cut_factor, "curvature_jump", cues.curvature_median / cues.curvature_ref,
                          limits.curvature_jump, "loss surface sharper than when exploring began", stage="refine")
    if cues.since_improvement >= plan.patience:
        return RateChange(limits.cut_factor, "validation_plateau", float(cues.since_improvement), float(plan.patience),
                          "validation plateau while exploring", stage="refine")
    if (
        components.raise_rate
        and cues.improving_streak >= plan.improve_cycles
        and (cues.consistency_ema is None or cues.consistency_ema > limits.min_consistency)
    ):
        return RateChange(limits.raise_factor, "sustained_improvement", float(plan.improve_cycles),
                          float(plan.improve_cycles),
                          f"validation improved for {plan.improve_cycles} cycles with consistent gradients")
    return None


def refine_change(cues: Convergence, refine_cuts: int, plan: SchedulePlan, limits: Limits) -> RateChange | None:
    """While refining: each plateau cuts the rate; the cut that makes ``limits.max_refine_cuts`` moves to ``settle``.

    ``refine_cuts`` counts the cuts made before this one. None: no plateau, no change.
    """
    if cues.since_improvement < plan.patience:
        return None
    settle = refine_cuts + 1 >= limits.max_refine_cuts
    return RateChange(limits.cut_factor, "validation_plateau", float(cues.since_improvement), float(plan.patience),
                      "validation plateau while refining", stage="settle" if settle else "refine")


def raised_weight_decay(old: float, limits: Limits) -> float:
    """The next weight decay on a generalisation gap: x``weight_decay_factor``, from ``weight_decay_start``, capped."""
    return min(old * limits.weight_decay_factor if old > 0 else limits.weight_decay_start, limits.max_weight_decay)


def lowered_momentum(group: Mapping[str, Any], limits: Limits) -> tuple[str, float, float] | None:
    """``(key, old, new)`` of a group's beta1 (Adam's ``betas``) or SGD ``momentum`` when gradients turn erratic.

    None when the group has neither, or it is already at ``limits.min_beta``.
    """
    key = "betas" if "betas" in group else "momentum" if group.get("momentum") else None
    if key is None:
        return None
    old = group[key][0] if key == "betas" else group[key]
    new = max(old * limits.beta_factor, limits.min_beta)
    return None if new == old else (key, old, new)
