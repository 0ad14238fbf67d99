"""The scheduler inside the TorchRec trainer: it reaches the fused embedding kernel, writes the trace,
survives NaN, resumes from a checkpoint, and reacts to a slowdown."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_retrain.model import FeatureEncoder
from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.resource import ResourceController
from recsys_retrain.schedule.rules import Components
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.hooks import Callback
from recsys_retrain.train.loop import train
from tests.train.test_checkpoints import CrashAfter
from tests.train.test_distributed import item_table, one_step, sharded_task
from tests.train.worlds import synthetic_world

SETTINGS = TrainSettings(embedding_dim=8, batch_size=64, seed=0)
PLAN = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=64, warmup_steps=4, max_epochs=6, patience=1,
                    min_epochs=2, decay="cosine")


def second_step_update(scale: float | None) -> float:
    """Size of the second embedding update, after the scheduler scaled every rate by ``scale``."""
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    torch.manual_seed(0)
    dmp, opt = sharded_task(encoder)
    sched = AdaptiveScheduler(dict(opt.optimizers), SchedulePlan(warmup_steps=0), model=dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    if scale is not None:
        sched.scale_rates(scale, "lr_down", "test", scale, 1.0, {}, "test")
    before = item_table(dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    return float((item_table(dmp) - before).norm())


def test_a_scheduled_rate_change_changes_the_fused_embedding_update_itself():
    unchanged, scaled = second_step_update(None), second_step_update(0.1)
    assert scaled == pytest.approx(0.1 * unchanged, rel=0.05), "the fused kernel did not take the new rate"


class DenseGroups(Callback):
    """The dense Adam's hyperparameters as the run starts."""

    def on_train_begin(self, optimizer):
        self.groups = [dict(g) for g in dict(optimizer.optimizers)["dense"].param_groups]


@pytest.mark.slow
def test_the_plans_weight_decay_and_beta1_start_the_dense_adam(tmp_path):
    history, catalogue = synthetic_world()
    seen = DenseGroups()
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=64, warmup_steps=0, max_epochs=1,
                        weight_decay=3e-3, beta1=0.8)
    train(history, catalogue, tmp_path, SETTINGS, progress=False, callbacks=[seen], plan=plan)
    assert seen.groups and all(g["weight_decay"] == 3e-3 and g["betas"][0] == 0.8 for g in seen.groups)
    static = DenseGroups()
    train(history, catalogue, tmp_path / "static", SETTINGS, progress=False, callbacks=[static])
    assert all(g["weight_decay"] == 0.0 and g["betas"][0] == 0.9 for g in static.groups)


def genre_validation(history):
    holdout, _ = synthetic_world(seed=1)

    def validate(model) -> float:
        from recsys_retrain.evaluate import evaluate

        return evaluate(model, history, holdout, k=5).ndcg

    return validate


@pytest.mark.slow
def test_a_validate_callback_may_return_per_user_values(tmp_path):
    from recsys_retrain.evaluate import user_metrics

    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=32, warmup_steps=0, max_epochs=2, patience=5,
                        probe_rates=(1.0, 4.0), probe_z=1.0)
    means = []

    def validate(model):
        users = user_metrics(model, history, holdout, 5).ndcg
        means.append(float(users.mean()))
        return users

    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=validate, plan=plan)
    trace = json.loads(Path(result.trace).read_text())
    assert [e["validation"] for e in trace["epochs"]] == pytest.approx(means[result.probe_validations:])
    probe = next(e for e in trace["events"] if e["action"] == "lr_probe")
    assert f"x1 {means[0]:.4f}" in probe["reason"] and f"x4 {means[1]:.4f}" in probe["reason"]


def test_an_adaptive_run_writes_its_trace_with_events_and_keeps_its_best_weights(tmp_path):
    history, catalogue = synthetic_world()
    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=genre_validation(history), plan=PLAN)
    trace = json.loads(Path(result.trace).read_text())
    assert trace["plan"] == PLAN.to_dict()
    assert len(trace["steps"]["loss"]) == result.n_steps
    assert [e["epoch"] for e in trace["epochs"]] == list(range(len(result.epoch_losses)))
    assert trace["events"][0]["action"] == "stage"
    assert all({"step", "epoch", "stage", "trigger", "changes", "reason"} <= set(e) for e in trace["events"])
    assert result.best_validation == max(e["validation"] for e in trace["epochs"])
    assert len(result.epoch_losses) <= PLAN.max_epochs


class PoisonWeights(Callback):
    """Writes NaN into a dense layer after the given step: the next loss is NaN."""

    def __init__(self, step: int):
        self.step, self.dmp = step, None

    def on_step(self, signals, optimizer):
        if signals.step == self.step:
            for _, opt in optimizer.optimizers:
                if "betas" in opt.param_groups[0]:
                    with torch.no_grad():
                        opt.param_groups[0]["params"][0].fill_(float("nan"))


@pytest.mark.parametrize("step, trigger", [(4, "nonfinite_loss"), (9, "nonfinite_weights")])  # mid-epoch, epoch's end
def test_a_nan_mid_run_is_rolled_back_and_no_nan_model_is_saved(tmp_path, step, trigger):
    history, catalogue = synthetic_world()
    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=genre_validation(history),
                   plan=PLAN, callbacks=[PoisonWeights(step=step)])
    trace = json.loads(Path(result.trace).read_text())
    nan_events = [e for e in trace["events"] if e["trigger"] == trigger]
    assert nan_events and nan_events[0]["action"] == "rollback"
    model = load_checkpoint(Path(result.checkpoint)).model
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert all(np.isfinite(result.epoch_losses))


def test_an_interrupted_adaptive_run_resumes_to_the_same_result(tmp_path):
    history, catalogue = synthetic_world()
    validate = genre_validation(history)
    straight = train(history, catalogue, tmp_path / "a", SETTINGS, progress=False, validate=validate, plan=PLAN)
    with pytest.raises(KeyboardInterrupt):
        train(history, catalogue, tmp_path / "b", SETTINGS, progress=False, validate=validate, plan=PLAN,
              callbacks=[CrashAfter(2)])
    resumed = train(history, catalogue, tmp_path / "b", SETTINGS, progress=False, validate=validate, plan=PLAN)
    assert resumed.epoch_losses == pytest.approx(straight.epoch_losses, rel=1e-6)
    a, b = (json.loads(Path(r.trace).read_text()) for r in (straight, resumed))
    assert a["events"] == b["events"]
    assert resumed.best_validation == pytest.approx(straight.best_validation)


class SlowDown(Callback):
    """Simulates a noisy neighbour: every step from ``epoch`` on takes ``seconds`` longer.

    0.15 s is about twice a step here, so the slowdown stands out of a loaded machine's
    own noise (0.05 s did not: epoch throughputs varied 4x with other work beside it)."""

    def __init__(self, epoch: int, seconds: float):
        self.epoch, self.seconds = epoch, seconds

    def on_step(self, signals, optimizer):
        if signals.epoch >= self.epoch:
            time.sleep(self.seconds)


@pytest.mark.slow
def test_a_slowdown_makes_the_resource_controller_raise_the_batch_size_and_scale_the_rate(tmp_path):
    history, catalogue = synthetic_world()
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=32, warmup_steps=0, max_epochs=5, patience=5)
    controller = ResourceController(tolerance=0.3, budget_epochs=2)  # budget: the best of epochs 1 and 2
    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=genre_validation(history),
                   plan=plan, callbacks=[SlowDown(epoch=2, seconds=0.15)], resource=controller)
    trace = json.loads(Path(result.trace).read_text())
    batch_events = [e for e in trace["events"] if e["action"] == "batch_size"]
    assert batch_events, f"no reaction to the slowdown: {controller.history}"
    event = batch_events[0]
    assert event["trigger"] == "throughput" and event["value"] < event["threshold"]
    assert event["changes"]["batch_size"] == [32.0, 64.0]
    old, new = event["changes"]["dense_lr"]
    assert new > old  # a bigger batch carries a higher rate (linear or square-root rule)
    assert trace["epochs"][-1]["batch_size"] in (64, 128, 256)


def test_the_batch_rate_rule_is_linear_below_the_noise_scale_and_square_root_above():
    assert ResourceController.lr_factor(64, 128, noise_scale=1000.0) == pytest.approx(2.0)
    assert ResourceController.lr_factor(64, 128, noise_scale=100.0) == pytest.approx(2**0.5)
    assert ResourceController.lr_factor(128, 64, noise_scale=None) == pytest.approx(0.5**0.5)


class DenseSteps(Callback):
    """Counts the dense Adam's optimiser steps at each epoch's end."""

    def __init__(self):
        self.steps: list[int] = []

    def on_epoch_end(self, signals, optimizer):
        dense = dict(optimizer.optimizers)["dense"]
        self.steps.append(max(int(st["step"]) for st in dense.state.values() if "step" in st))


@pytest.mark.slow
def test_memory_pressure_halves_the_micro_batch_and_accumulates_so_the_dense_step_keeps_its_batch(tmp_path):
    history, catalogue = synthetic_world()
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=64, warmup_steps=0, max_epochs=4, patience=5)
    controller = ResourceController(max_memory_mb=100.0, memory=lambda: 1000.0, min_batch=8, max_accumulation=4)
    dense = DenseSteps()
    # rollbacks and the generalisation-gap response off: both restore a snapshot, which rewinds
    # Adam's step counter that this test counts
    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=genre_validation(history),
                   plan=plan, callbacks=[dense], resource=controller, components=Components(rollback=False, weight_decay=False))
    events = [e for e in json.loads(Path(result.trace).read_text())["events"] if e["trigger"] == "memory"]
    assert [e["action"] for e in events] == ["accumulation", "accumulation", "batch_size"]
    assert events[0]["changes"] == {"batch_size": [64.0, 32.0], "accumulation": [1.0, 2.0]}  # no rate changed
    assert events[1]["changes"] == {"batch_size": [32.0, 16.0], "accumulation": [2.0, 4.0]}
    assert events[2]["changes"]["batch_size"] == [16.0, 8.0] and "dense_lr" in events[2]["changes"]  # past 4: smaller batch
    dense_steps = np.diff([0, *dense.steps])
    micro_steps = np.bincount(json.loads(Path(result.trace).read_text())["steps"]["epoch"])
    assert micro_steps[2] >= 3.5 * micro_steps[0]  # a quarter of the batch: four times the micro-batches ...
    assert abs(dense_steps[2] - dense_steps[0]) <= 1  # ... and the same dense steps (one per four micro-batches)
    assert dense_steps[1] == math.ceil(micro_steps[1] / 2)
    assert controller.accumulation == 4 and np.isfinite(result.epoch_losses).all()


def test_precision_turns_bf16_on_under_a_slowdown_on_cuda_and_back_to_fp32_after_a_nonfinite_loss():
    model = torch.nn.Linear(4, 1)
    sched = AdaptiveScheduler(torch.optim.Adam(model.parameters(), lr=0.01), SchedulePlan(warmup_steps=0), model=model)
    controller = ResourceController(min_throughput=1000.0, cuda=True, patience=1)
    assert controller.precision == "fp32" and not controller.autocast
    controller.observe_step(1.0, 100)  # 100 samples/s: far below the budget
    assert controller.adjust(512, sched, epoch=0, steps=10) == 512  # precision first, batch kept
    assert controller.autocast and sched.events[-1].action == "precision"
    assert sched.events[-1].changes == {"precision_bits": (32.0, 16.0)}
    sched.recover("nonfinite_loss", math.nan)
    controller.observe_step(1.0, 5000)
    controller.adjust(512, sched, epoch=1, steps=20)
    assert controller.precision == "fp32" and sched.events[-1].trigger == "nonfinite_loss"
    restored = ResourceController(cuda=True)
    restored.load_state_dict(controller.state_dict())
    assert (restored.precision, restored.accumulation) == ("fp32", 1)


def test_one_slow_epoch_moves_no_lever_two_in_a_row_do():
    model = torch.nn.Linear(4, 1)
    sched = AdaptiveScheduler(torch.optim.Adam(model.parameters(), lr=0.01), SchedulePlan(warmup_steps=0), model=model)
    controller = ResourceController(min_throughput=1000.0, cuda=False)  # patience 2
    for epoch, (samples, expected) in enumerate(((100, 512), (5000, 512), (100, 512), (100, 1024))):
        controller.observe_step(1.0, samples)
        assert controller.adjust(512, sched, epoch=epoch, steps=10) == expected, f"epoch {epoch}"


def test_precision_is_no_lever_on_cpu():
    model = torch.nn.Linear(4, 1)
    sched = AdaptiveScheduler(torch.optim.Adam(model.parameters(), lr=0.01), SchedulePlan(warmup_steps=0), model=model)
    controller = ResourceController(min_throughput=1000.0, cuda=False, patience=1)
    controller.observe_step(1.0, 100)
    assert controller.adjust(512, sched, epoch=0, steps=10) == 1024  # straight to the batch size
    assert not controller.autocast and sched.events[-1].action == "batch_size"


def test_the_first_epoch_probes_the_rate_multipliers_and_training_goes_on_from_the_best(tmp_path):
    history, catalogue = synthetic_world()
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.1, batch_size=32, warmup_steps=0, max_epochs=3, patience=5,
                        probe_rates=(1.0, 8.0))
    calls = []
    scorer = genre_validation(history)

    def validate(model):
        calls.append(scorer(model))
        return calls[-1]

    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=validate, plan=plan)
    trace = json.loads(Path(result.trace).read_text())
    probe = [e for e in trace["events"] if e["action"] == "lr_probe"]
    assert len(probe) == 1 and probe[0]["epoch"] == 0
    kept = 8.0 if calls[1] >= calls[0] - plan.probe_tol * abs(calls[0]) else 1.0  # within the tolerance: the higher
    assert f"kept x{kept:g}" in probe[0]["reason"]
    assert result.probe_validations == 2 and len(calls) == 2 + len(result.epoch_losses)
    assert calls[2] == pytest.approx(calls[1] if kept == 8.0 else calls[0])  # epoch 1 ends on the kept candidate's weights
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3))  # cosine base decay after one epoch of three
    assert trace["epochs"][0]["sparse_lr"] == pytest.approx(0.1 * kept * decay, rel=0.05)


@pytest.mark.parametrize(("guard", "kept"), [(True, 1.0), (False, 8.0)])
def test_a_probe_candidate_whose_user_tower_collapsed_loses_a_tie(tmp_path, monkeypatch, guard, kept):
    # at x8 (dense Adam 0.8) every ReLU of the user tower dies: every user gets one vector and the
    # validation, carried by the prior, cannot tell it from x1's; a tie goes to the higher rate, but
    # not to a collapsed tower over one that learnt
    from recsys_retrain.model import user_spread
    from recsys_retrain.train import loop

    if not guard:
        monkeypatch.setattr(loop, "COLLAPSED_SPREAD", 0.0)
    history, catalogue = synthetic_world()
    plan = SchedulePlan(dense_lr=0.1, sparse_lr=0.1, batch_size=32, warmup_steps=0, max_epochs=1, min_epochs=1,
                        patience=5, probe_rates=(1.0, 8.0))
    result = train(history, catalogue, tmp_path, SETTINGS, progress=False, validate=lambda model: 0.5, plan=plan)
    probe = next(e for e in json.loads(Path(result.trace).read_text())["events"] if e["action"] == "lr_probe")
    assert f"kept x{kept:g}" in probe["reason"]
    model = load_checkpoint(result.checkpoint)
    spread = user_spread(model.model, model.encoder.user_kjt(history.drop_duplicates("user_id")))
    assert (spread > 0.1) if guard else (spread == 0.0)
    if guard:
        assert "degenerate (last among ties): x8" in probe["reason"]

