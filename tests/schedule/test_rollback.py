"""Safe-fail: a change that makes validation worse is undone and retried smaller, a NaN or a collapse brings
back a snapshot at half the rate; without a model there is nothing to go back to."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.rules import Components
from tests.schedule.test_controller import run_epoch, scripted


def test_a_change_that_makes_validation_worse_is_rolled_back_and_retried_smaller():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.30, train_loss=1.0)
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.40, train_loss=1.0)  # sustained improvement: rate x1.5
    before_change = [p.detach().clone() for p in model.parameters()]
    raised = sched.get_last_lr()[0]
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.20, train_loss=1.0)  # far below 0.40 * (1 - 5%)
    rollback, retry = sched.events[-2], sched.events[-1]
    assert rollback.action == "rollback" and rollback.trigger == "validation_drop"
    assert all(torch.equal(a, b) for a, b in zip(before_change, model.parameters()))
    assert retry.action == "lr_up" and "half the change" in retry.reason
    assert sched.get_last_lr()[0] == pytest.approx(0.01 * math.sqrt(1.5))
    assert sched.get_last_lr()[0] < raised


def test_rollback_switched_off_keeps_a_bad_change():
    model, opt, sched, x, y = scripted(components=Components(rollback=False))
    run_epoch(model, opt, sched, x, y)
    for value in (0.30, 0.40, 0.20):
        sched.epoch_end(value, train_loss=1.0)
    assert not [e for e in sched.events if e.action == "rollback"]


def test_a_nan_loss_restores_the_last_snapshot_halves_the_rate_and_skips_the_step():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.5, train_loss=1.0)
    rate = sched.get_last_lr()[0]
    run_epoch(model, opt, sched, x, y, poison_at=2)
    event = next(e for e in sched.events if e.trigger == "nonfinite_loss")
    assert event.action == "rollback" and event.value is None or math.isnan(event.value)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert sched.get_last_lr()[0] == pytest.approx(rate / 2)


def test_a_collapse_without_a_change_restores_the_best_weights_and_halves_the_rate():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.50, train_loss=1.0)
    best = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.10, train_loss=0.9)  # a fifth of the best, no change pending
    event = sched.events[-1]
    assert (event.action, event.trigger) == ("rollback", "validation_collapse")
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()).detach(), best)
    assert sched.control == pytest.approx(0.5)


def test_without_a_model_nothing_is_snapshotted_and_a_nan_only_halves_the_rate():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=0))
    sched.recover("nonfinite_loss", math.nan)
    assert sched.get_last_lr() == pytest.approx([0.05]) and "no snapshot yet" in sched.events[-1].reason
    assert sched.snapshots() == {"last_good": None, "best": None, "pending": None}
