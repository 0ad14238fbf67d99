"""Convergence: the smoothed metric's plateaus and streaks, the best raw value, the curvature reference,
and a state that rebuilds what it can derive."""

from __future__ import annotations

import math

import pytest

from recsys_retrain.schedule.convergence import Convergence, improves_on, upper_median
from recsys_retrain.schedule.signals import Reading


def reading(step: int, grad_norm: float, grad_norm_long: float, curvature: float | None = None) -> Reading:
    return Reading(step, 1.0, 1.0, 1.0, 0.0, grad_norm, grad_norm_long, curvature, None, None)


def test_streaks_and_plateaus_read_the_smoothed_metric_and_the_best_is_the_raw_one():
    cues = Convergence()
    news = [cues.read_validation(v, epoch, smoothing=0.5, tol=0.01) for epoch, v in enumerate((0.2, 0.4, 0.3, 0.3), 1)]
    assert news == [True, True, False, False]
    assert cues.smoothed_history == pytest.approx([0.2, 0.3, 0.3, 0.3])
    assert (cues.best, cues.best_epoch, cues.since_improvement, cues.improving_streak) == (0.4, 1, 2, 0)
    assert improves_on(0.5, -math.inf, 0.5) and not improves_on(0.505, 0.5, 0.01)


def test_the_first_allowed_positive_median_becomes_the_curvature_reference():
    cues = Convergence()
    for step, curvature in enumerate((3.0, 1.0, 2.0, -1.0)):
        cues.read_probes(reading(step * 10, 1.0, 1.0, curvature), probe_every=10)
    cues.read_probes(reading(5, 1.0, 1.0, 9.0), probe_every=10)  # not a probe step
    cues.close_curvature_epoch(may_set_reference=False)  # e.g. the rate probe's epoch
    assert (cues.curvature_median, cues.curvature_ref, cues.curvature_epoch) == (2.0, None, [])
    cues.read_probes(reading(40, 1.0, 1.0, 4.0), probe_every=10)
    cues.close_curvature_epoch(may_set_reference=True)
    assert (cues.curvature_median, cues.curvature_ref) == (4.0, 4.0)
    assert upper_median([1.0, 3.0]) == 3.0


def test_the_gradient_norm_ratio_waits_for_a_reading():
    cues = Convergence()
    assert cues.norm_ratio() == math.inf
    cues.read_step(reading(0, 2.0, 1.0))
    assert cues.norm_ratio() == 1.0  # the short average starts at the first norm: twice the long one
    cues.read_step(reading(1, math.nan, 1.0))  # a non-finite norm leaves the average alone
    assert cues.grad_norm_short == 2.0


def test_the_state_rebuilds_the_smoothed_metric_and_leaves_out_the_last_reading():
    cues = Convergence()
    cues.read_step(reading(0, 1.0, 1.0))
    for epoch, v in enumerate((0.2, 0.4, 0.3), 1):
        cues.read_validation(v, epoch, smoothing=0.5, tol=0.01)
    restored = Convergence()
    restored.load_state_dict(cues.state_dict())
    assert restored.state_dict() == cues.state_dict()
    assert (restored.smoothed, restored.smooth_best) == (cues.smoothed, cues.smooth_best)
    assert cues.smoothed == pytest.approx(0.3) and cues.smooth_best == pytest.approx(0.3)
    assert restored.last_reading is None and "smoothed" not in cues.state_dict()
