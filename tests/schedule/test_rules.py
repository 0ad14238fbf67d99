"""The controller's rules as pure functions: rate paths checked against target lists, and each decision
from the cues that trigger it."""

from __future__ import annotations

import math

import pytest

from recsys_retrain.schedule.convergence import Convergence
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.rules import (
    Components,
    Limits,
    base_decay,
    bounded,
    clamp_control,
    explore_change,
    generalisation_gap,
    lowered,
    lowered_momentum,
    raised_weight_decay,
    rate_factor,
    refine_change,
    retry_factor,
    warmup_over,
)


def cues(**values) -> Convergence:
    state = Convergence()
    for name, value in values.items():
        setattr(state, name, value)
    return state


def test_warm_up_then_linear_decay_follows_its_target_path():
    plan = SchedulePlan(warmup_steps=4, max_epochs=2, decay="linear", decay_floor=0.5)
    path = [rate_factor("warmup" if step < 4 else "explore", step, 2.0, plan, Limits(), steps_per_epoch=4)
            for step in range(10)]
    targets = [0.1 * 1.0, 0.325 * 0.9375, 0.55 * 0.875, 0.775 * 0.8125, 0.75, 0.6875, 0.625, 0.5625, 0.5, 0.5]
    assert path == pytest.approx([2.0 * t for t in targets])


@pytest.mark.parametrize(("decay", "targets"), [
    ("cosine", [1.0, 0.96651, 0.875, 0.75, 0.625, 0.53349, 0.5, 0.5]),
    ("linear", [1.0, 11 / 12, 10 / 12, 9 / 12, 8 / 12, 7 / 12, 0.5, 0.5]),
    ("none", [1.0] * 8),
])
def test_base_decay_reaches_its_floor_at_the_epoch_budget(decay, targets):
    plan = SchedulePlan(max_epochs=3, decay=decay, decay_floor=0.5)
    assert [base_decay(step, plan, steps_per_epoch=2) for step in range(8)] == pytest.approx(targets, abs=1e-5)
    assert base_decay(5, plan, steps_per_epoch=None) == 1.0  # no epoch length: no decay


def test_bounds_on_the_multiplier_and_on_each_change():
    limits = Limits(min_control=0.01, max_control=8.0)
    assert [clamp_control(c, limits) for c in (0.001, 1.0, 20.0)] == [0.01, 1.0, 8.0]
    assert [bounded(f, 2.0) for f in (0.1, 1.5, 3.0)] == [0.5, 1.5, 2.0]
    assert retry_factor(4.0) == pytest.approx(2.0) and retry_factor(0.5) == pytest.approx(math.sqrt(0.5))
    assert retry_factor(1.001) is None  # half of a tiny change is not worth a retry
    assert lowered(0.4, 0.05) == pytest.approx(0.38) and lowered(-0.4, 0.05) == pytest.approx(-0.42)


def test_warm_up_ends_at_the_ramp_length_or_halfway_once_the_gradient_norm_settles():
    plan, limits = SchedulePlan(warmup_steps=10), Limits(warmup_settle=0.25)
    assert warmup_over(10, math.inf, plan, limits)
    assert warmup_over(5, 0.1, plan, limits) and not warmup_over(4, 0.1, plan, limits)
    assert not warmup_over(7, 0.3, plan, limits)


PLAN = SchedulePlan(patience=2, improve_cycles=2)


@pytest.mark.parametrize(("state", "components", "expected"), [
    ({"curvature_ref": 1.0, "curvature_median": 4.0}, Components(), ("curvature_jump", 0.5, "refine")),
    ({"curvature_ref": 1.0, "curvature_median": 4.0}, Components(curvature=False), None),
    ({"since_improvement": 2}, Components(), ("validation_plateau", 0.5, "refine")),
    ({"improving_streak": 2}, Components(), ("sustained_improvement", 1.5, None)),
    ({"improving_streak": 2, "consistency_ema": -0.2}, Components(), None),  # erratic gradients: no raise
    ({"improving_streak": 2}, Components(raise_rate=False), None),
    ({"improving_streak": 1, "since_improvement": 1}, Components(), None),
])
def test_explore_cuts_on_a_curvature_jump_or_plateau_and_raises_on_a_consistent_streak(state, components, expected):
    change = explore_change(cues(**state), PLAN, Limits(), components)
    assert (change and (change.trigger, change.factor, change.stage)) == expected


def test_refine_cuts_on_each_plateau_and_the_last_cut_settles():
    limits = Limits(max_refine_cuts=2)
    assert refine_change(cues(since_improvement=1), 0, PLAN, limits) is None
    assert refine_change(cues(since_improvement=2), 0, PLAN, limits).stage == "refine"
    last = refine_change(cues(since_improvement=3), 1, PLAN, limits)
    assert (last.factor, last.value, last.stage) == (0.5, 3.0, "settle")


def test_a_generalisation_gap_needs_three_cycles_of_both_falling_below_the_best():
    gap = cues(smoothed_history=[0.50, 0.45, 0.40], train_losses=[1.0, 0.9, 0.8], best=0.50)
    assert generalisation_gap(gap, tol=0.01)
    assert not generalisation_gap(cues(smoothed_history=[0.50, 0.45, 0.40], train_losses=[1.0, 0.9, 0.95],
                                       best=0.50), tol=0.01)  # training loss rose too: no gap
    assert not generalisation_gap(cues(smoothed_history=[0.45, 0.40], train_losses=[0.9, 0.8], best=0.5), tol=0.01)


def test_weight_decay_starts_then_multiplies_up_to_its_cap():
    limits = Limits(weight_decay_start=1e-5, weight_decay_factor=3.0, max_weight_decay=1e-2)
    assert [raised_weight_decay(old, limits) for old in (0.0, 1e-4, 5e-3)] == pytest.approx([1e-5, 3e-4, 1e-2])


def test_beta1_or_sgd_momentum_is_lowered_down_to_its_floor():
    limits = Limits(beta_factor=0.9, min_beta=0.5)
    assert lowered_momentum({"betas": (0.9, 0.999)}, limits) == ("betas", 0.9, pytest.approx(0.81))
    assert lowered_momentum({"momentum": 0.52}, limits) == ("momentum", 0.52, 0.5)
    assert lowered_momentum({"momentum": 0.5}, limits) is None  # already at the floor
    assert lowered_momentum({"momentum": 0.0}, limits) is None  # plain SGD: nothing to lower
