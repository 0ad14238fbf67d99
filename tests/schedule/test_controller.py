"""AdaptiveScheduler on plain PyTorch: stages move on measured cues, every change is an event,
a bad change is undone, and the state survives a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_retrain.schedule import AdaptiveScheduler, Components, SchedulePlan
from recsys_retrain.schedule.controller import as_reading, paired_gap, race_order

PLAN = SchedulePlan(warmup_steps=4, max_epochs=50, decay="none", patience=2, improve_cycles=2, plateau_tol=0.01,
                    rollback_tol=0.05, cooldown=0, min_epochs=1)


def regression(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return model, x, y


def run_epoch(model, opt, sched, x, y, batch=16, poison_at: int | None = None) -> float:
    """One epoch of mini-batch steps; returns the mean loss. ``poison_at``: make that batch's loss NaN."""
    losses = []
    for i in range(0, len(x), batch):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[i : i + batch]), y[i : i + batch])
        if poison_at is not None and i // batch == poison_at:
            loss = loss * float("nan")
        loss.backward()
        if sched.observe(float(loss.detach()), batch_size=batch):
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
    return sum(losses) / max(len(losses), 1)


def scripted(plan=PLAN, components=Components(), lr=0.01):
    model, x, y = regression()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return model, opt, AdaptiveScheduler(opt, plan, model=model, steps_per_epoch=4, components=components), x, y


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


def test_state_dict_round_trip_continues_like_an_uninterrupted_run():
    def drive(sched, values):
        for v in values:
            for _ in range(4):
                sched.step()
            sched.epoch_end(v, train_loss=1.0)

    values = [0.3, 0.4, 0.45, 0.45, 0.45, 0.46, 0.46, 0.46]
    model, opt, straight, _, _ = scripted()
    drive(straight, values)

    model, opt, first, _, _ = scripted()
    drive(first, values[:3])
    state = first.state_dict()
    model, opt, resumed, _, _ = scripted()
    resumed.load_state_dict(state)
    resumed.load_snapshots(first.snapshots())
    drive(resumed, values[3:])

    assert resumed.get_last_lr() == pytest.approx(straight.get_last_lr())
    assert resumed.stage == straight.stage
    assert [e.to_dict() for e in resumed.events] == [e.to_dict() for e in straight.events]
    assert isinstance(state["events"], list) and all(isinstance(e, dict) for e in state["events"])


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


def test_the_rate_probe_races_the_multipliers_and_goes_on_from_the_winner():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = SchedulePlan(warmup_steps=0, probe_rates=(1.0, 4.0, 0.25, 2.0), probe_tol=0.0)
    sched = AdaptiveScheduler(opt, plan, model=model)
    seen = []

    def run(round_: int) -> float:  # "trains": moves the weights by the rate; the best rate is 0.4 (x4)
        lr = opt.param_groups[0]["lr"]
        seen.append((round_, lr, float(model.weight.sum())))
        with torch.no_grad():
            model.weight.add_(lr)
        return -abs(math.log(lr / 0.4))

    assert sched.probe(run) == pytest.approx(0.0)
    first = [(lr, start) for r, lr, start in seen if r == 0]
    assert [lr for lr, _ in first] == pytest.approx([0.1, 0.4, 0.025, 0.2])
    assert all(start == 0.0 for _, start in first)  # every candidate started from the same weights
    second = sorted((lr, start) for r, lr, start in seen if r == 1)
    assert second == [(pytest.approx(0.2), pytest.approx(0.4)), (pytest.approx(0.4), pytest.approx(0.8))]  # the better half, each from its own weights
    assert float(model.weight[0, 0]) == pytest.approx(0.8)  # the kept weights are the x4 candidate's after two rounds
    assert sched.get_last_lr() == pytest.approx([0.4]) and sched.control == pytest.approx(4.0)
    assert sched.stage == "explore"  # the probe replaced the warm-up
    event = sched.events[-1]
    assert (event.action, event.trigger) == ("lr_probe", "validation")
    assert event.changes == {"default_lr": (pytest.approx(0.1), pytest.approx(0.4))} and "kept x4" in event.reason


@pytest.mark.parametrize(("tol", "kept"), [(0.1, 2.0), (0.01, 1.0)])
def test_within_the_probe_tolerance_the_higher_rate_wins(tol, kept):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0), probe_tol=tol), model=model)
    readings = {0.1: 0.50, 0.2: 0.48}  # x2 is 4% behind x1
    sched.probe(lambda r: readings[round(opt.param_groups[0]["lr"], 6)])
    assert sched.control == kept


def test_a_higher_rate_within_the_tolerance_survives_the_first_round_too():
    # after the first half x4 reads third (0.109, behind x1's 0.110) but within 15% of x2's 0.120:
    # a tie with the best, so x4 goes on to the second round instead of x1
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0, 4.0, 8.0), probe_tol=0.15), model=model)
    readings = {0: {0.1: 0.110, 0.2: 0.120, 0.4: 0.109, 0.8: 0.02}, 1: {0.1: 0.12, 0.2: 0.10, 0.4: 0.13, 0.8: 0.0}}
    raced = []

    def run(round_: int) -> float:
        lr = round(opt.param_groups[0]["lr"], 6)
        raced.append((round_, lr))
        return readings[round_][lr]

    sched.probe(run)
    assert sorted(lr for r, lr in raced if r == 1) == [0.2, 0.4]  # x1 (0.110) dropped, not x4 (0.109)
    assert sched.control == 4.0


def test_race_order_ranks_ties_by_rate_and_the_rest_by_reading():
    field = [(1.0, "a", [0.10]), (2.0, "b", [0.12]), (4.0, "c", [0.105]), (8.0, "d", [0.01])]
    assert [m for m, _, _ in race_order(field, tol=0.15)] == [4.0, 2.0, 1.0, 8.0]
    assert [m for m, _, _ in race_order(field, tol=0.0)] == [2.0, 4.0, 1.0, 8.0]
    diverged = [(1.0, "a", [-math.inf]), (2.0, "b", [-math.inf])]
    assert [m for m, _, _ in race_order(diverged, tol=0.15)] == [1.0, 2.0]  # nothing to go on: the lower rate


def per_user(lr_scores: dict[float, list[float]], opt):
    """A probe ``run`` whose reading is the per-user list of the candidate's rate."""
    return lambda r: lr_scores[round(opt.param_groups[0]["lr"], 6)]


@pytest.mark.parametrize(("z", "kept"), [(None, 2.0), (1.0, 1.0)])
def test_a_paired_per_user_comparison_breaks_a_tie_the_tolerance_allows(z, kept):
    # x2 reads 4% below x1 (within the 15% tolerance), but on every one of the 40 users: a real gap
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0), probe_tol=0.15, probe_z=z)
    sched = AdaptiveScheduler(opt, plan, model=model)
    users = [0.2 + 0.01 * u for u in range(40)]
    sched.probe(per_user({0.1: users, 0.2: [v * 0.96 for v in users]}, opt))
    assert sched.control == kept
    assert "x1 0.3950" in sched.events[-1].reason  # the event reads the means


def test_only_the_last_round_asks_for_paired_evidence():
    # after the first half x4 trails x1 by 5% on every user (within the tolerance): it still races on,
    # since a higher rate often reads lower early; it then leads the final round and is kept
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0, 4.0, 8.0), probe_tol=0.15, probe_z=1.0)
    sched = AdaptiveScheduler(opt, plan, model=model)
    users = [0.2 + 0.01 * u for u in range(40)]
    readings = {0: {0.1: users, 0.2: [v * 0.99 for v in users], 0.4: [v * 0.95 for v in users], 0.8: [v * 0.5 for v in users]},
                1: {0.2: users, 0.4: [v * 1.1 for v in users]}}
    raced = []

    def run(round_: int) -> list[float]:
        lr = round(opt.param_groups[0]["lr"], 6)
        raced.append((round_, lr))
        return readings[round_][lr]

    sched.probe(run)
    assert sorted(lr for r, lr in raced if r == 1) == [0.2, 0.4]
    assert sched.control == 4.0


def test_a_gap_within_the_per_user_noise_stays_a_tie_and_the_higher_rate_wins():
    # x2 reads 1% below x1 on average, but users disagree (half higher, half lower): no evidence of a gap
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0), probe_z=1.0), model=model)
    users = [0.3] * 40
    noisy = [0.3 + (0.1 if u % 2 else -0.106) for u in range(40)]
    sched.probe(per_user({0.1: users, 0.2: noisy}, opt))
    assert sched.control == 2.0


def test_paired_gap_averages_each_candidates_readings_before_pairing_users():
    best = [(0.4, 0.2, 0.3), (0.2, 0.2, 0.3)]  # per user: 0.3, 0.2, 0.3
    other = [(0.1, 0.1, 0.2), (0.1, 0.1, 0.2)]  # per user: 0.1, 0.1, 0.2
    gap, se = paired_gap(best, other)
    assert gap == pytest.approx(0.4 / 3) and se == pytest.approx(math.sqrt(1 / 300) / math.sqrt(3))
    assert paired_gap([0.3], [0.2]) is None  # plain metrics: nothing to pair
    assert paired_gap([(0.3, 0.2)], [(0.3, 0.2, 0.1)]) is None  # not the same users


def test_a_per_user_reading_with_a_non_finite_value_reads_as_diverged():
    assert as_reading([0.1, math.nan]) == -math.inf and as_reading([]) == -math.inf
    assert as_reading([0.1, 0.3]) == (0.1, 0.3) and as_reading(math.inf) == -math.inf and as_reading(0.2) == 0.2


def test_without_probe_rates_the_probe_just_runs_once():
    model = torch.nn.Linear(2, 1)
    sched = AdaptiveScheduler(torch.optim.SGD(model.parameters(), lr=0.1), SchedulePlan(warmup_steps=0), model=model)
    calls = []
    assert sched.probe(lambda r: calls.append(r) or 0.5) == 0.5
    assert calls == [0] and not sched.events and sched.control == 1.0
