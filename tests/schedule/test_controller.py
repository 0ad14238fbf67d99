"""AdaptiveScheduler on plain PyTorch: stages move on measured cues, every change is an event,
and the state survives a checkpoint (``torch.save``, then ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch

from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.rules import Components, Limits

PLAN = SchedulePlan(warmup_steps=4, max_epochs=50, decay="none", patience=2, improve_cycles=2, plateau_tol=0.01,
                    rollback_tol=0.05, cooldown=0, min_epochs=1)


def regression(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return model, x, y


def run_epoch(
    model, opt, sched, x, y, batch=16, poison_at: int | None = None, spike_at: int | None = None, spike: float = 1e3,
) -> float:
    """One epoch of mini-batch steps; returns the mean loss.

    ``poison_at``: make that batch's loss NaN; ``spike_at``: scale that batch's loss (and gradient) by ``spike``.
    """
    losses = []
    for i in range(0, len(x), batch):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[i : i + batch]), y[i : i + batch])
        if poison_at is not None and i // batch == poison_at:
            loss = loss * float("nan")
        if spike_at is not None and i // batch == spike_at:
            loss = loss * spike
        loss.backward()
        if sched.observe(float(loss.detach()), batch_size=batch):
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
    return sum(losses) / max(len(losses), 1)


def scripted(plan=PLAN, components=Components(), lr=0.01, limits=Limits()):
    model, x, y = regression()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = AdaptiveScheduler(opt, plan, model=model, steps_per_epoch=4, components=components, limits=limits)
    return model, opt, sched, x, y


def test_warm_up_ramps_the_rate_up_to_the_base_rate():
    model, opt, sched, x, y = scripted()
    assert sched.stage == "warmup"
    assert sched.get_last_lr()[0] == pytest.approx(0.001)  # 10% of the base rate
    run_epoch(model, opt, sched, x, y)
    assert sched.stage == "explore"
    assert sched.get_last_lr()[0] == pytest.approx(0.01)
    assert sched.events[0].action == "stage" and sched.events[0].stage == "explore"


def test_a_plateau_while_exploring_cuts_the_rate_and_moves_to_refine():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    for value in (0.50, 0.50, 0.50):
        sched.epoch_end(value, train_loss=1.0)
    event = sched.events[-1]
    assert (event.action, event.trigger, event.stage) == ("lr_down", "validation_plateau", "refine")
    assert event.value == 2 and event.threshold == PLAN.patience
    assert event.changes["default_lr"] == pytest.approx((0.01, 0.005))
    assert sched.get_last_lr()[0] == pytest.approx(0.005)


def test_sustained_improvement_raises_the_rate_within_the_bound():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    for value in (0.30, 0.40):
        sched.epoch_end(value, train_loss=1.0)
    event = sched.events[-1]
    assert (event.action, event.trigger) == ("lr_up", "sustained_improvement")
    old, new = event.changes["default_lr"]
    assert 1 < new / old <= PLAN.max_change


def test_refine_plateaus_lead_to_settle_and_a_settled_plateau_stops_with_the_best_weights_back():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.9, train_loss=1.0)  # best, snapshot taken
    best = [p.detach().clone() for p in model.parameters()]
    for _ in range(12):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(0.86, train_loss=1.0)  # worse but within the rollback tolerance
        if sched.should_stop:
            break
    stages = [e.stage for e in sched.events if e.action in ("lr_down", "stop")]
    assert stages[:3] == ["refine", "refine", "settle"]
    assert sched.should_stop and sched.events[-1].action == "stop"
    assert sched.finish()
    assert all(torch.equal(a, b) for a, b in zip(best, model.parameters()))
    assert sched.events[-1].action == "restore_best"


def test_a_generalisation_gap_raises_weight_decay_and_returns_to_the_best_weights_at_a_higher_rate():
    model, opt, sched, x, y = scripted()
    best = None
    for value, loss in ((0.50, 1.0), (0.45, 0.9), (0.40, 0.8)):
        run_epoch(model, opt, sched, x, y)
        best = best if best is not None else torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        sched.epoch_end(value, train_loss=loss)
    decay, raise_ = sched.events[-2:]
    assert (decay.action, decay.trigger) == ("weight_decay_up", "generalisation_gap")
    assert (raise_.action, raise_.trigger) == ("lr_up", "generalisation_gap")
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-5)
    assert sched.control == pytest.approx(PLAN.max_change)
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()).detach(), best)  # back to the weights of the best validation (epoch 1)


def test_in_refine_a_generalisation_gap_only_raises_weight_decay():
    model, opt, sched, x, y = scripted()
    run_epoch(model, opt, sched, x, y)
    sched.stage = "refine"
    for value, loss in ((0.50, 1.0), (0.45, 0.9), (0.40, 0.8)):
        sched.epoch_end(value, train_loss=loss)
    assert sched.events[-1].action == "weight_decay_up" and sched.control == 1.0


def test_a_gradient_spike_lowers_adam_beta1():
    model, opt, sched, x, y = scripted()
    for _ in range(3):
        run_epoch(model, opt, sched, x, y)
    opt.zero_grad()
    (model(x).sum() * 1e4).backward()  # a gradient far above its running norm
    sched.observe(1.0, batch_size=16)
    event = sched.events[-1]
    assert (event.action, event.trigger) == ("momentum_down", "gradient_spike")
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.81)


def test_it_drives_several_optimisers_at_once():
    model, x, y = regression()
    first, second = list(model.children())[0], list(model.children())[2]
    opts = {"a": torch.optim.SGD(first.parameters(), lr=0.1), "b": torch.optim.Adam(second.parameters(), lr=0.01)}
    sched = AdaptiveScheduler(opts, PLAN, model=model, steps_per_epoch=4)
    for _ in range(5):
        sched.step()
    sched.epoch_end(0.5)
    sched.epoch_end(0.5)
    sched.epoch_end(0.5)
    assert sched.lrs() == pytest.approx({"a": 0.05, "b": 0.005})
    assert set(sched.events[-1].changes) == {"a_lr", "b_lr"}


def test_it_trains_a_plain_model_end_to_end_and_stops_by_itself():
    model, opt, sched, x, y = scripted(plan=SchedulePlan(warmup_steps=4, max_epochs=200, decay="cosine", patience=3))
    for epoch in range(200):
        loss = run_epoch(model, opt, sched, x, y)
        sched.epoch_end(-float(torch.nn.functional.mse_loss(model(x), y)), train_loss=loss)
        if sched.should_stop:
            break
    sched.finish()
    assert sched.should_stop and epoch < 199
    assert float(torch.nn.functional.mse_loss(model(x), y)) < 0.5 * float(y.var())
    assert {e.stage for e in sched.events} >= {"explore", "refine"}




# -- state_dict round trips ------------------------------------------------------------------------------

# smoothed validation, a cooldown, and a curvature jump within reach: the restored cues then steer decisions
RESUME = dataclasses.replace(PLAN, smoothing=0.7, cooldown=1)
RESUME_LIMITS = Limits(curvature_jump=1.5)
PROBE_PLAN = dataclasses.replace(RESUME, warmup_steps=0, decay="cosine", probe_rates=(0.5, 1.0, 2.0, 4.0))


def fresh(sched, model, opt, x, y):
    """Nothing yet: the state right after construction."""


def mid_warmup(sched, model, opt, x, y):
    run_epoch(model, opt, sched, x[:32], y[:32])  # two of the four warm-up steps
    assert sched.stage == "warmup"


def mid_epoch_after_a_spike(sched, model, opt, x, y):  # beta1 lowered once this epoch: not again in it
    for value in (0.30, 0.30):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(value, train_loss=1.0)
    run_epoch(model, opt, sched, x[:48], y[:48], spike_at=2, spike=100.0)
    assert sched.events[-1].action == "momentum_down" and sched.cues.since_improvement == 1


def after_a_raise(sched, model, opt, x, y):  # a change pending its verdict
    for value in (0.30, 0.40):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(value, train_loss=1.0)
    assert sched.events[-1].action == "lr_up"


def after_a_rollback(sched, model, opt, x, y):
    for value in (0.30, 0.40, 0.20):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(value, train_loss=1.0)
    assert [e.action for e in sched.events[-2:]] == ["rollback", "lr_up"]


def after_a_nan(sched, model, opt, x, y):
    run_epoch(model, opt, sched, x, y)
    sched.epoch_end(0.5, train_loss=1.0)
    run_epoch(model, opt, sched, x, y, poison_at=1)
    assert any(e.trigger == "nonfinite_loss" for e in sched.events)


def with_a_generalisation_gap(sched, model, opt, x, y):  # weight decay raised, back at the best weights
    for value, loss in ((0.50, 1.0), (0.45, 0.9), (0.40, 0.8)):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(value, train_loss=loss)
    assert sched.events[-2].action == "weight_decay_up"


def refining(sched, model, opt, x, y):  # one cut into refine, the best weights trained at a raised rate
    for value in (0.30, 0.40, 0.41, 0.90, 0.86, 0.86, 0.86, 0.86, 0.86, 0.86):
        run_epoch(model, opt, sched, x, y)
        sched.epoch_end(value, train_loss=1.0)
    assert sched.stage == "refine" and sched.refine_cuts == 1 and sched.best_control != 1.0


def after_the_probe(sched, model, opt, x, y):
    def run(round_: int) -> float:  # half an epoch per round, at the candidate's rate
        run_epoch(model, opt, sched, x[:32], y[:32])
        return -float(torch.nn.functional.mse_loss(model(x), y).detach())

    sched.probe(run)
    sched.epoch_end(-float(torch.nn.functional.mse_loss(model(x), y).detach()), train_loss=1.0)
    assert any(e.action == "lr_probe" for e in sched.events)


def checkpoint(model, opt, sched) -> dict:
    """The model, optimiser and scheduler states through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "snapshots": sched.snapshots()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def plain(value, path="state") -> None:
    """Asserts ``value`` holds only numbers, strings, lists, dicts and None (tensors only in the signal tracker)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{path}: key {k!r}"
            plain(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            plain(v, f"{path}[{i}]")
    elif isinstance(value, torch.Tensor):
        assert path.startswith("state.signals."), f"{path}: a tensor outside the signal tracker"
    else:
        assert value is None or isinstance(value, (bool, int, float, str)), f"{path}: {type(value).__name__}"


def continue_run(model, opt, sched, x, y) -> list:
    """Eight more epochs (a gradient spike in the first, a NaN in the third); every rate, decision and weight."""
    seen = []
    for epoch, value in enumerate((0.45, 0.47, 0.47, 0.47, 0.47, 0.30, 0.47, 0.47)):
        run_epoch(model, opt, sched, x, y, spike_at=1 if epoch == 0 else None, poison_at=2 if epoch == 2 else None)
        seen.append(sched.get_last_lr())
        sched.epoch_end(value, train_loss=1.0 - 0.1 * epoch)
        seen.append((sched.get_last_lr(), sched.stage, sched.control, copy.deepcopy(opt.param_groups[0]["betas"])))
    seen.append(sched.finish())
    seen.append(sched.summary())
    seen.append(as_lists(sched.state_dict()))  # every field ends the same, events included
    seen.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().tolist())
    return seen


def as_lists(value):
    """``value`` with its tensors as lists and NaN as a string, for ``==``."""
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    if isinstance(value, torch.Tensor):
        return as_lists(value.tolist())
    return "nan" if isinstance(value, float) and math.isnan(value) else value


@pytest.mark.parametrize(
    ("plan", "reach"),
    [(RESUME, fresh), (RESUME, mid_warmup), (RESUME, mid_epoch_after_a_spike), (RESUME, after_a_raise),
     (RESUME, after_a_rollback), (RESUME, after_a_nan), (RESUME, with_a_generalisation_gap), (RESUME, refining),
     (PROBE_PLAN, after_the_probe)],
    ids=lambda v: v.__name__ if callable(v) else ("probe" if v.probe_rates else "plan"),
)
def test_a_restored_scheduler_continues_exactly_as_the_original(plan, reach):
    model, opt, sched, x, y = scripted(plan=plan, limits=RESUME_LIMITS)
    reach(sched, model, opt, x, y)
    saved = checkpoint(model, opt, sched)
    plain(saved["scheduler"])

    torch.manual_seed(1)  # other weights, a default plan and limits: everything must come from the checkpoint
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    restored = AdaptiveScheduler(opt2, SchedulePlan(), model=model2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    restored.load_state_dict(saved["scheduler"])
    restored.load_snapshots(saved["snapshots"])
    assert as_lists(restored.state_dict()) == as_lists(saved["scheduler"])
    assert (restored.cues.smoothed, restored.cues.smooth_best) == (sched.cues.smoothed, sched.cues.smooth_best)
    assert restored.get_last_lr() == sched.get_last_lr()

    assert continue_run(model2, opt2, restored, x, y) == continue_run(model, opt, sched, x, y)
