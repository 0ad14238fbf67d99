"""Fast checks of the decision benchmark's helpers (no training, no MLflow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_decisions", BENCH / "decisions.py")
decisions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decisions)


def test_replay_windows_are_consecutive_weeks_ending_at_the_last_start():
    wins = decisions.replay_windows(pd.Timestamp("1998-04-13", tz="UTC"), 3)
    assert [s.date().isoformat() for s, _ in wins] == ["1998-03-30", "1998-04-06", "1998-04-13"]
    assert all(e - s == pd.Timedelta(days=7) for s, e in wins)
    assert all(wins[i][1] == wins[i + 1][0] for i in range(2))
    assert decisions.window_name(*wins[0]) == "1998-03-30T00:00:00+00:00/1998-04-06T00:00:00+00:00"


def test_split_puts_everything_before_the_start_in_history():
    ts = pd.to_datetime(["1998-01-01", "1998-01-05", "1998-01-08", "1998-01-12"], utc=True)
    frame = pd.DataFrame({"timestamp": ts, "item_id": [1, 2, 3, 4]})
    history, window = decisions.split(frame, pd.Timestamp("1998-01-05", tz="UTC"), pd.Timestamp("1998-01-12", tz="UTC"))
    assert history["item_id"].tolist() == [1] and window["item_id"].tolist() == [2, 3]


def test_permute_items_is_a_bijection_of_the_catalogue():
    ids = np.arange(1, 51)
    frame = pd.DataFrame({"user_id": np.arange(100) % 7, "item_id": np.tile(ids, 2)})
    shuffled = decisions.permute_items(frame, ids, seed=0)
    assert sorted(shuffled["item_id"].unique()) == ids.tolist()
    assert (shuffled["item_id"] != frame["item_id"]).mean() > 0.8
    pairs = set(zip(frame["item_id"], shuffled["item_id"]))
    assert len(pairs) == len(ids)  # each id always maps to the same new id


class _Table(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.catalogue = pd.DataFrame({"item_id": np.arange(5)})

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return torch.arange(5, dtype=torch.float32).repeat(len(users), 1)


def test_degrading_model_is_exact_before_the_onset_and_noisy_after():
    inner = _Table()
    onset = pd.Timestamp("1998-03-02", tz="UTC")
    model = decisions.DegradingModel(inner, onset, noise=3.0)
    users = pd.DataFrame({"user_id": [1, 2, 3]})
    before = pd.DataFrame({"timestamp": pd.to_datetime(["1998-02-20", "1998-03-01"], utc=True)})
    after = pd.DataFrame({"timestamp": pd.to_datetime(["1998-02-20", "1998-03-03"], utc=True)})
    assert torch.equal(model.score(users, before), inner.score(users))
    noisy = model.score(users, after)
    assert not torch.equal(noisy, inner.score(users))
    assert torch.equal(noisy, model.score(users, after))  # deterministic on a re-scored window
    assert model.catalogue is inner.catalogue


def test_plain_makes_results_json_safe():
    out = decisions.plain({"a": np.float64("nan"), "b": [np.int64(3), np.bool_(True)], "c": (1.5, float("inf"))})
    assert out == {"a": None, "b": [3, True], "c": [1.5, None]}


# --------------------------------------------------------------------------- false promotions, near-threshold challengers

ITEMS = np.arange(1, 21)


class _Fixed(nn.Module):
    """A recommender whose scores are a fixed ``[user, item]`` table (rows indexed by user id)."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.catalogue = pd.DataFrame({"item_id": ITEMS})
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return self.table[torch.as_tensor(users["user_id"].to_numpy())]


def _interactions(pairs: list[tuple[int, int]], day: str) -> pd.DataFrame:
    users, items = zip(*pairs)
    return pd.DataFrame({
        "user_id": users, "item_id": items, "timestamp": pd.Timestamp(day, tz="UTC"),
        "user_gender": "M", "user_age": 25, "user_occupation": "other",
    })


def _next_window(n_users: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user saw item 1 before and meets items 2 and 3 in the next window."""
    history = _interactions([(u, 1) for u in range(n_users)], "1998-01-01")
    window = _interactions([(u, i) for u in range(n_users) for i in (2, 3)], "1998-01-08")
    return history, window


def _ranking(first: list[int], n_users: int = 6) -> np.ndarray:
    """Scores putting ``first`` on top, in that order, for every user."""
    row = np.zeros(len(ITEMS) + 1)
    for rank, item in enumerate(first):
        row[item] = 100.0 - rank
    return np.tile(row[1:], (n_users, 1))


def test_a_promotion_worse_than_the_kept_champion_on_the_next_window_is_a_false_promotion():
    history, window = _next_window()
    kept = _Fixed(_ranking([2, 3]))  # ranks the next window's items first
    promoted = _Fixed(_ranking([10, 11, 12, 13, 14, 15, 16, 17, 18, 2]))  # finds one of them at rank 10
    check = decisions.next_window_check(promoted, kept, history, window)
    assert check["gap"] < 0 and check["worse"] and check["n_users"] == 6
    assert check["ci"][1] < 0  # all six users lose: worse beyond resampling
    counted = decisions.count_false_promotions([check])
    assert counted == {"false_promotions": 1, "judged": 1, "promotions": 1, "share": 1.0}


def test_a_promotion_better_on_the_next_window_is_not_false_and_one_without_a_next_window_is_not_judged():
    history, window = _next_window()
    better = decisions.next_window_check(_Fixed(_ranking([2, 3])), _Fixed(_ranking([5, 2])), history, window)
    assert better["gap"] > 0 and not better["worse"]
    counted = decisions.count_false_promotions([better, None])
    assert counted == {"false_promotions": 0, "judged": 1, "promotions": 2, "share": 0.0}
    assert decisions.count_false_promotions([None])["share"] is None


def test_noisy_model_noise_is_fixed_per_user_and_zero_sigma_is_the_inner_model():
    inner = _Fixed(np.random.default_rng(0).normal(size=(8, len(ITEMS))))
    users = pd.DataFrame({"user_id": [1, 4, 6]})
    assert torch.equal(decisions.NoisyModel(inner, 0.0, seed=1).score(users), inner.score(users))
    noisy = decisions.NoisyModel(inner, 0.5, seed=1)
    together = noisy.score(users)
    alone = noisy.score(users.iloc[[1]])
    assert torch.equal(together[1:2], alone)  # a user's noise does not depend on who else is scored
    assert not torch.equal(together, inner.score(users))
    assert not torch.equal(together, decisions.NoisyModel(inner, 0.5, seed=2).score(users))
    assert noisy.catalogue is inner.catalogue


def _synthetic_window(n_users: int = 300, seed: int = 0) -> tuple[_Fixed, pd.DataFrame, pd.DataFrame]:
    """A model that ranks each user's two next-window items well but not perfectly."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n_users, len(ITEMS)))
    pairs = []
    for u in range(n_users):
        items = rng.choice(ITEMS[1:], size=2, replace=False)
        table[u, items - 1] += 1.5
        pairs += [(u, int(i)) for i in items]
    history = _interactions([(u, 1) for u in range(n_users)], "1998-01-01")
    return _Fixed(table), history, _interactions(pairs, "1998-01-08")


def test_pooled_ndcg_of_a_scored_window_is_what_user_metrics_gives_the_noisy_model():
    model, history, window = _synthetic_window(60)
    pool = [decisions.scored_window(model, history, window)]
    directions = [decisions.noise_direction(w.scores, w.user_ids, 3) for w in pool]
    for sigma in (0.0, 0.3, 1.0):
        expected = decisions.user_metrics(decisions.NoisyModel(model, sigma, 3), history, window, 10).mean_ndcg
        assert decisions.pooled_ndcg(pool, directions, sigma) == pytest.approx(expected, abs=1e-6)


def test_calibrated_noise_makes_the_model_worse_by_the_level_on_its_pool():
    model, history, window = _synthetic_window()
    pool = [decisions.scored_window(model, history, window)]
    base = decisions.pooled_ndcg(pool, None, 0.0)
    previous = 0.0
    for level in (0.05, 0.10, 0.20):
        sigma, achieved = decisions.calibrate_sigma(pool, level, seed=0, k=10)
        assert achieved == pytest.approx(level, abs=0.01)
        assert sigma > previous
        previous = sigma
        noisy = decisions.user_metrics(decisions.NoisyModel(model, sigma, 0), history, window, 10).mean_ndcg
        assert 1 - noisy / base == pytest.approx(achieved, abs=1e-6)


def test_calibrated_noise_is_relative_to_a_reference_and_none_when_the_model_is_already_worse():
    model, history, window = _synthetic_window()
    pool = [decisions.scored_window(model, history, window)]
    base = decisions.pooled_ndcg(pool, None, 0.0)
    # the clean model is 10 % below this champion: 20 % below takes noise, 5 % or 10 % below cannot be reached
    sigma, achieved = decisions.calibrate_sigma(pool, 0.20, seed=0, reference=base / 0.9)
    assert sigma > 0 and achieved == pytest.approx(0.20, abs=0.01)
    assert decisions.calibrate_sigma(pool, 0.05, seed=0, reference=base / 0.9) is None
    assert decisions.calibrate_sigma(pool, 0.10, seed=0, reference=base / 0.9 + 1e-9) is None


def test_rejection_summary_reports_share_interval_and_achieved_degradation():
    rows = [
        {"seed": 0, "window": "w1", "promoted": False, "achieved_degradation": 0.06, "calibration_degradation": 0.05,
         "failed_checks": ["mean_gain", "non_inferior"]},
        {"seed": 0, "window": "w2", "promoted": True, "achieved_degradation": -0.01, "calibration_degradation": 0.05,
         "failed_checks": []},
        {"seed": 1, "window": "w1", "promoted": False, "achieved_degradation": 0.10, "calibration_degradation": 0.05,
         "failed_checks": ["mean_gain"]},
        {"seed": 1, "window": "w2", "promoted": False, "achieved_degradation": 0.05, "calibration_degradation": 0.05,
         "failed_checks": ["mean_gain"]},
    ]
    out = decisions.rejection_summary(0.05, [*rows, {"seed": 2, "window": "w1", "calibrated": False}])
    assert out["cases"] == 4 and out["rejected"] == 3 and out["rejected_share"] == 0.75
    assert out["not_calibrated"] == 1  # counted, not gated
    low, high = out["rejected_share_ci95"]
    assert 0.2 < low < 0.75 < high < 1.0  # Wilson interval of 3 of 4
    assert out["achieved_degradation_mean"] == pytest.approx(0.05)
    assert out["achieved_better_on_window"] == 1
    assert out["failed_checks"] == {"mean_gain": 3, "non_inferior": 1}
    assert out["promoted_cases"] == [{"seed": 0, "window": "w2", "achieved_degradation": -0.01}]


def _figures(**changes) -> dict:
    level = {"rejected_share": 1.0}
    out = {"bad_rejected": 9, "bad_total": 9, "revert_delay_windows": 2, "false_reverts": 0,
           "false_promotion_share": 0.0, "gate_s": 1.0,
           "near_threshold": {"0.05": dict(level), "0.10": dict(level), "0.20": dict(level)}}
    out.update(changes)
    return out


def test_goals_are_computed_from_the_figures_and_can_fail():
    assert all(decisions.goals_met(_figures()).values())
    assert set(decisions.goals_met(_figures())) == set(decisions.GOALS)
    missed = decisions.goals_met(_figures(false_promotion_share=0.4))
    assert not missed["false_promotions"]
    assert not decisions.goals_met(_figures(false_promotion_share=None))["false_promotions"]  # nothing judged
    near = {"0.05": {"rejected_share": 0.9}, "0.10": {"rejected_share": 0.7}, "0.20": {"rejected_share": 0.9}}
    missed = decisions.goals_met(_figures(near_threshold=near))
    assert not missed["near_threshold_monotone"] and missed["near_threshold_0.05"] and not missed["near_threshold_0.20"]
