"""recsys_retrain.backtest: the policy rules, the paired interval, and a real three-window replay of every policy.

Real Feast, Evidently, TorchRec and the production gate on a slice of MovieLens-100K
(tiny model, one epoch), in a private home and feature repository.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys_retrain import backtest
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings
from tests.conftest import copy_feature_repo


@pytest.mark.parametrize(
    ("policy", "severity", "retrain_on", "expected"),
    [
        ("never", "major", "minor", False),
        ("weekly", "none", "minor", True),
        ("drift", "minor", "minor", True),
        ("drift", "minor", "major", False),
        ("drift_adaptive", "major", "major", True),
        ("drift_adaptive", "none", "minor", False),
        ("drift_warm", "minor", "minor", True),
        ("recent_pop", "major", "minor", False),  # the reference policies refit every week, they never retrain a model
        ("ease", "major", "minor", False),
    ],
)
def test_each_policy_retrains_when_its_rule_says(policy, severity, retrain_on, expected):
    assert backtest.retrains(policy, severity, retrain_on) is expected


def test_a_bad_backtest_request_fails_with_one_line(tmp_path):
    s = Settings(home=tmp_path)
    with pytest.raises(PipelineError, match="at least 2 windows"):
        backtest.backtest(s, [pd.Timestamp("1998-01-05", tz="UTC")], tmp_path)
    with pytest.raises(PipelineError, match="unknown policy"):
        backtest.backtest(s, [pd.Timestamp("1998-01-05", tz="UTC")] * 2, tmp_path, policies=("sometimes",))


def test_the_paired_interval_covers_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    week = rng.normal(0.3, 0.05, 20)  # a hard or easy week moves both policies alike
    better = backtest.paired_ci(week + 0.02 + rng.normal(0, 0.005, 20), week)
    same = backtest.paired_ci(week + rng.normal(0, 0.005, 20), week)
    assert better["low"] > 0 and better["diff"] == pytest.approx(0.02, abs=0.004)
    assert same["low"] < 0 < same["high"]
    assert backtest.paired_ci([0.2, 0.2], [0.2, 0.2]) == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_an_unknown_gate_policy_fails_with_one_line(tmp_path):
    s = Settings(home=tmp_path / "home")
    with pytest.raises(PipelineError, match="unknown gate policy"):
        backtest.backtest(s, backtest.window_starts("1998-01-05", 2), tmp_path, gate_policies=("coin_flip",))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, movielens) -> tuple[backtest.BacktestResult, object]:
    root = tmp_path_factory.mktemp("backtest")
    inter = movielens.interactions
    repo = copy_feature_repo(root / "features")
    bootstrap_feature_repo(RawData(inter[inter["timestamp"] < pd.Timestamp("1997-11-17", tz="UTC")], movielens.users,
                                   movielens.items), repo)
    s = Settings(home=root / "home", feature_repo=repo, train={"epochs": 1, "embedding_dim": 8}, drift={"permutations": 100},
                 schedule={"probe_rates": [], "kb_probe_rates": []})  # the rate probe's extra passes: not what is tested here
    starts = backtest.window_starts("1997-10-27", 3)
    result = backtest.backtest(s, starts, root / "out", retrain_on="minor", gate_policies=("fresher_unless_worse",),
                               progress=False)
    return result, root


@pytest.mark.slow
def test_the_replay_scores_every_policy_on_the_same_windows(replayed):
    result, root = replayed
    assert [p.policy for p in result.policies] == list(backtest.POLICIES)
    assert len(result.windows) == len(result.severities) == 3
    for p in result.policies:
        assert len(p.ndcg10) == len(p.retrained) == len(p.staleness_days) == 2 and 0.0 < p.mean_ndcg10 < 1.0
        assert p.mean_ndcg10 == pytest.approx(sum(p.ndcg10) / 2)
        assert p.retrained[-1] is False  # a model trained on the last window would serve nothing
    by = {p.policy: p for p in result.policies}
    assert by["never"].trains == by["never"].train_epochs == 0 and by["never"].train_s == 0.0
    assert by["weekly"].trains == 1 and by["weekly"].train_epochs >= 1 and by["weekly"].train_s > 0
    drifted = backtest.triggers(result.severities[1], "minor")
    assert by["drift"].trains == by["drift_adaptive"].trains == by["drift_warm"].trains == int(drifted)
    assert by["never"].ndcg10[0] == by["weekly"].ndcg10[0] == by["drift"].ndcg10[0]  # the same first model serves week 1
    assert by["recent_pop"].trains == by["ease"].trains == 0 and by["recent_pop"].ndcg10 != by["never"].ndcg10
    assert by["drift_warm"].warm_starts <= by["drift_warm"].trains and by["weekly"].warm_starts == 0


@pytest.mark.slow
def test_what_serves_has_seen_every_day_before_its_window(replayed):
    result, _ = replayed
    by = {p.policy: p for p in result.policies}
    assert by["never"].staleness_days == (0.0, 7.0)  # the first model is refit through window 0, then ages
    for p in result.policies:
        assert len(p.promoted_staleness_days) == p.promotions
        assert sum(d == 0.0 for d in p.promoted_staleness_days) == p.promotions - p.refits_rejected, p
    assert set(result.by_gate_policy) == {"fresher_unless_worse"}
    assert [p.policy for p in result.by_gate_policy["fresher_unless_worse"]] == ["weekly", "drift", "drift_adaptive"]


@pytest.mark.slow
def test_the_replay_writes_its_json_and_plot(replayed):
    result, root = replayed
    saved = backtest.BacktestResult.from_dict(json.loads((root / "out" / "backtest.json").read_text()))
    assert saved == result
    assert (root / "out" / "backtest.png").read_bytes()[:4] == b"\x89PNG"
    summary = result.summary()
    assert set(summary) == set(backtest.POLICIES)
    assert {"mean_ndcg10", "ci_vs_never", "ci_vs_recent_pop", "promotions", "train_epochs", "train_s",
            "staleness_days"} <= set(summary["weekly"])
    assert summary["never"]["ci_vs_never"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
