"""Convergence: what a run has shown so far, folded from every step's signals and every validation cycle.

``SignalTracker`` reads one step; ``AdaptiveScheduler`` decides at validation cycles.
Between them sits what the decisions compare against: the validation metric raw and
smoothed, its best and how long since it improved, the training losses, and the step
signals folded per cycle (the median curvature and its reference, the gradient
consistency, a short gradient-norm average). The rules in ``rules`` read these values;
only the scheduler changes them.

Example:
    >>> cues = Convergence()
    >>> [cues.read_validation(v, epoch, smoothing=1.0, tol=0.01) for epoch, v in enumerate((0.30, 0.40, 0.40), 1)]
    [True, True, False]
    >>> cues.best, cues.best_epoch, cues.since_improvement
    (0.4, 1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from recsys_retrain.schedule.signals import Reading, ema


class Convergence:
    """The cues of one run; ``state_dict()`` lists every field but the derived ones and the last step's reading.

    Attributes:
        validations: the validation metric per cycle (a rolled-back cycle reads as the value it went back to).
        train_losses: the mean training loss per epoch.
        smoothed_history: the smoothed validation metric per cycle (EMA of weight ``plan.smoothing``).
        smoothed / smooth_best: its latest value and its best (derived from ``smoothed_history``).
        best / best_epoch: the best raw validation and its epoch (0-based; -1: none yet).
        since_improvement: cycles since the smoothed metric last beat its best by ``plan.plateau_tol``.
        improving_streak: cycles in a row that did.
        curvature_median / curvature_ref: the last cycle's median curvature probe, and the first
            exploring cycle's (the reference a jump is measured against).
        curvature_epoch: the curvature probes of the current cycle.
        consistency_ema: EMA of the cosine between successive probed gradients.
        grad_norm_short: short EMA of the gradient norm (its ratio to the long one ends warm-up).
        last_reading: the last step's signals (not saved: the next step reads new ones).
    """

    def __init__(self) -> None:
        self.validations: list[float] = []
        self.train_losses: list[float] = []
        self.smoothed_history: list[float] = []
        self.smoothed: float | None = None
        self.smooth_best = -math.inf
        self.best = -math.inf
        self.best_epoch = -1
        self.since_improvement = 0
        self.improving_streak = 0
        self.curvature_median: float | None = None
        self.curvature_ref: float | None = None
        self.curvature_epoch: list[float] = []
        self.consistency_ema: float | None = None
        self.grad_norm_short: float | None = None
        self.last_reading: Reading | None = None

    def read_step(self, reading: Reading) -> None:
        """Keeps the step's reading and folds its gradient norm into the short average."""
        self.last_reading = reading
        if math.isfinite(reading.grad_norm):
            self.grad_norm_short = ema(self.grad_norm_short, reading.grad_norm, 0.1)

    def read_probes(self, reading: Reading, probe_every: int) -> None:
        """Folds a finite step's curvature probe (every ``probe_every`` steps) and gradient consistency."""
        probed = reading.step % probe_every == 0
        if probed and reading.curvature is not None and math.isfinite(reading.curvature):
            self.curvature_epoch.append(reading.curvature)
        if reading.consistency is not None and math.isfinite(reading.consistency):
            self.consistency_ema = ema(self.consistency_ema, reading.consistency, 0.2)

    def read_validation(self, validation: float, epoch: int, smoothing: float, tol: float) -> bool:
        """Plateau and streak cues read the smoothed metric; the kept weights are those of the best raw value.

        ``epoch`` counts the cycles done, this one included. True when ``validation`` is a
        new best (the caller keeps those weights).
        """
        self.smoothed = validation if self.smoothed is None else ema(self.smoothed, validation, smoothing)
        self.smoothed_history.append(self.smoothed)
        if improves_on(self.smoothed, self.smooth_best, tol):
            self.since_improvement = 0
            self.improving_streak += 1
        else:
            self.since_improvement += 1
            self.improving_streak = 0
        self.smooth_best = max(self.smooth_best, self.smoothed)
        if validation > self.best:
            self.best, self.best_epoch = validation, epoch - 1
            return True
        return False

    def close_curvature_epoch(self, may_set_reference: bool) -> None:
        """Epoch median of the curvature probes; the first explore epoch's median is the reference.

        Not the rate probe's epoch: it starts from the initial weights at full rate, where the
        loss surface sharpens on its own as training leaves the flat start (progressive
        sharpening), and a reference taken there makes the next epoch look like a jump. The
        caller says whether this epoch may set it (exploring, and not the probe's epoch).
        """
        if self.curvature_epoch:
            self.curvature_median = upper_median(self.curvature_epoch)
            if self.curvature_ref is None and may_set_reference and self.curvature_median > 0:
                self.curvature_ref = self.curvature_median
        self.curvature_epoch = []

    def norm_ratio(self) -> float:
        """``|short / long - 1|`` of the gradient norm averages; inf while either is missing."""
        long = self.last_reading.grad_norm_long if self.last_reading is not None else None
        if not long or self.grad_norm_short is None:
            return math.inf
        return abs(self.grad_norm_short / long - 1)

    def state_dict(self) -> dict[str, Any]:
        """The cues as plain values (the keys are those of ``AdaptiveScheduler.state_dict``, which holds them)."""
        return {
            "validations": list(self.validations),
            "train_losses": list(self.train_losses),
            "smoothed_history": list(self.smoothed_history),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "since_improvement": self.since_improvement,
            "improving_streak": self.improving_streak,
            "curvature_median": self.curvature_median,
            "curvature_ref": self.curvature_ref,
            "_curvature_epoch": list(self.curvature_epoch),
            "consistency_ema": self.consistency_ema,
            "grad_norm_short": self.grad_norm_short,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict()`` and rebuilds the smoothed metric and its best from ``smoothed_history``."""
        self.validations, self.train_losses = list(state["validations"]), list(state["train_losses"])
        self.smoothed_history = list(state["smoothed_history"])
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.since_improvement, self.improving_streak = state["since_improvement"], state["improving_streak"]
        self.curvature_median, self.curvature_ref = state["curvature_median"], state["curvature_ref"]
        self.curvature_epoch = list(state["_curvature_epoch"])
        self.consistency_ema, self.grad_norm_short = state["consistency_ema"], state["grad_norm_short"]
        self.smoothed = self.smoothed_history[-1] if self.smoothed_history else None
        self.smooth_best = max(self.smoothed_history, default=-math.inf)


def improves_on(smoothed: float, smooth_best: float, tol: float) -> bool:
    """The smoothed metric beats the best so far by more than the relative ``tol`` (the first reading always does)."""
    return smooth_best == -math.inf or smoothed > smooth_best + tol * abs(smooth_best)


def upper_median(values: Sequence[float]) -> float:
    """The median of ``values``, the upper one of the middle two for an even count."""
    return float(sorted(values)[len(values) // 2])
