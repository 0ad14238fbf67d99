"""The rate probe: successive halving over rate multipliers on the first epoch, ties broken toward the higher
rate, per-user readings paired in the last round, and the probe's cost in passes over the data."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.probe import as_reading, paired_gap, probe_passes, probe_rounds, race, race_order


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


def test_the_race_keeps_the_better_half_each_round_and_continues_each_candidate_from_its_own_state():
    state = {"rate": 1.0, "trained": 0.0}  # a candidate: its rate and how far it got
    log = []

    def run(round_: int) -> float:
        state["trained"] += state["rate"]
        log.append((round_, state["rate"], state["trained"]))
        return -abs(state["trained"] - 4.0 * (round_ + 1))  # x4 every round is on target

    result = race((1.0, 2.0, 4.0, 8.0), run, save=lambda: dict(state), restore=lambda s: state.update(s),
                  set_rate=lambda m: state.update(rate=m), tol=0.0, z=None)
    assert [(r, m) for r, m, _ in log] == [(0, 1.0), (0, 2.0), (0, 4.0), (0, 8.0), (1, 4.0), (1, 2.0)]
    assert (result.multiplier, result.saved, result.readings) == (4.0, {"rate": 4.0, "trained": 8.0}, [-0.0, -0.0])
    assert set(result.field) == {1.0, 2.0, 4.0, 8.0} and len(result.field[2.0]) == 2 and len(result.field[8.0]) == 1
    assert result.scores((1.0, 4.0)) == "x1 -3.0000, x4 -0.0000 > -0.0000"


@pytest.mark.parametrize(("candidates", "rounds", "passes"), [(0, 0, 1.0), (1, 1, 1.0), (2, 1, 2.0), (3, 2, 2.0),
                                                             (4, 2, 3.0), (8, 3, 4.0 + 2.0 / 3.0)])
def test_rounds_and_passes_of_successive_halving(candidates, rounds, passes):
    assert probe_rounds(candidates) == rounds
    assert probe_passes(candidates) == pytest.approx(passes)


def test_a_degenerate_candidate_ranks_last_among_ties_and_only_there():
    field = [(1.0, "a", [0.110]), (2.0, "b", [0.107]), (8.0, "c", [0.108]), (4.0, "d", [0.05])]
    assert [m for m, _, _ in race_order(field, tol=0.15)] == [8.0, 2.0, 1.0, 4.0]
    assert [m for m, _, _ in race_order(field, tol=0.15, degenerate={2.0, 8.0})] == [1.0, 8.0, 2.0, 4.0]
    assert [m for m, _, _ in race_order(field, tol=0.15, degenerate={1.0, 2.0, 8.0})] == [8.0, 2.0, 1.0, 4.0]  # all alike
    ahead = [(1.0, "a", [0.10]), (8.0, "c", [0.20])]  # beyond the tolerance: a flag does not hold it back
    assert [m for m, _, _ in race_order(ahead, tol=0.15, degenerate={8.0})] == [8.0, 1.0]


def test_the_probe_asks_after_each_run_whether_the_candidate_is_degenerate():
    # every candidate reads the same; x4 and x8 are flagged (the trainer: a collapsed user tower), so x2 wins
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=0, probe_rates=(1.0, 2.0, 4.0, 8.0), probe_tol=0.15), model=model)
    sched.probe(lambda r: 0.5, degenerate=lambda: opt.param_groups[0]["lr"] > 0.3)
    assert sched.control == 2.0
    assert sched.events[-1].reason.endswith("kept x2; degenerate (last among ties): x4, x8")
