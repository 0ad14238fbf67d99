"""Fast checks of the backtest benchmark's goals: each can fail, and each reads the figures it names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_backtest", BENCH / "backtest.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

WEEKS = 8


def policy(level: float, promotions: int = 1, train_s: float = 100.0, stale: tuple[float, ...] = (0.0,)) -> dict:
    return {"mean_ndcg10": level, "promotions": promotions, "train_s": train_s, "promoted_staleness_days": list(stale),
            "ci_vs_never": None}


def world(**changes) -> tuple[dict, dict]:
    """A summary where every goal holds: the pipeline a little ahead of both baselines every week."""
    levels = {"never": 0.30, "weekly": 0.32, "drift": 0.32, "drift_adaptive": 0.325, "drift_warm": 0.32,
              "recent_pop": 0.31, "ease": 0.29}
    levels.update(changes.pop("levels", {}))
    summary = {p: policy(v, train_s={"weekly": 100.0, "drift_adaptive": 40.0}.get(p, 60.0)) for p, v in levels.items()}
    for p, fields in changes.items():
        summary[p].update(fields)
    wobble = [0.01 * ((i % 3) - 1) for i in range(WEEKS)]  # weeks differ, and a policy's weeks with them
    ndcg = {p: [summary[p]["mean_ndcg10"] + w + 0.001 * (i % 2) for i, w in enumerate(wobble)] for p in summary}
    never = ndcg["never"]
    for p in summary:
        summary[p]["ci_vs_never"] = bench.bt.paired_ci(ndcg[p], never)
    return summary, ndcg


def test_a_pipeline_ahead_of_the_baselines_meets_every_goal():
    goals, verdicts = bench.goals(*world(), "synthetic")
    assert all(goals.values()), goals
    assert verdicts["best_pipeline_policy"] == "drift_adaptive"
    assert verdicts["drift_vs_weekly"]["drift_adaptive"]["train_s_share"] == 0.4


@pytest.mark.parametrize(("changes", "missed"), [
    ({"levels": {"recent_pop": 0.34}}, "best_pipeline>=recent_pop"),
    ({"levels": {"ease": 0.34}}, "best_pipeline>=ease"),
    ({"drift": {"promotions": 0}}, "every_retraining_policy_promotes"),
    ({"levels": {"never": 0.325}}, "synthetic_best_beats_never_ci"),
    ({"drift_adaptive": {"train_s": 80.0}, "drift_warm": {"train_s": 80.0}}, "drift_policy>=weekly_at_half_compute"),
    ({"weekly": {"promoted_staleness_days": [0.0, 7.0]}}, "promoted_staleness_0"),
])
def test_each_goal_fails_when_its_figure_says_so(changes, missed):
    goals, _ = bench.goals(*world(**changes), "synthetic")
    assert goals[missed] is False
    assert [k for k, v in goals.items() if not v] == [missed]


def test_the_synthetic_only_goal_is_not_asked_of_real_data():
    goals, _ = bench.goals(*world(), "movielens")
    assert "synthetic_best_beats_never_ci" not in goals and all(goals.values())


@pytest.mark.parametrize(("diff", "low", "high", "need", "words"), [
    (0.01, 0.0, 0.02, 0.0, "met"),
    (-0.002, -0.01, 0.006, 0.0, "within noise"),
    (-0.02, -0.03, -0.01, 0.0, "missed"),
])
def test_verdicts_read_a_miss_with_its_interval(diff, low, high, need, words):
    assert bench.verdict(diff, low, high, need) == words
