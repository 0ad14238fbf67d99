"""Fast checks of the quality benchmark's split and verdicts (no training, no data download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.evaluate import UserEval

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_quality", BENCH / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)

# users 1, 2 and items 10, 11 before the cut; user 3 and item 12 only after it
INTER = pd.DataFrame({
    "user_id": [1, 2, 1, 2, 1, 3, 3, 2],
    "item_id": [10, 11, 11, 10, 10, 11, 12, 12],
    "timestamp": pd.to_datetime(range(8), unit="D", utc=True),
})


def test_the_default_split_keeps_warm_users_and_seen_items_as_before():
    train, test = quality.temporal_split(INTER, 0.5)
    assert train["timestamp"].max() < test["timestamp"].min()
    assert len(train) == 4 and test["user_id"].tolist() == [1] and test["item_id"].tolist() == [10]


def test_the_cold_inclusive_split_keeps_cold_users_but_not_unseen_items():
    train, test = quality.temporal_split(INTER, 0.5, cold_users=True)
    assert len(train) == 4
    assert test["user_id"].tolist() == [1, 3] and test["item_id"].tolist() == [10, 11]
    assert 12 not in set(test["item_id"])  # no method can rank an item without a training interaction


@pytest.mark.parametrize(("mean", "low", "high", "words"), [
    (0.03, 0.01, 0.05, "model beats the baseline by 0.0300"),
    (-0.03, -0.05, -0.01, "model loses to the baseline by 0.0300"),
    (-0.01, -0.04, 0.02, "model behind by 0.0100, within noise"),
    (0.01, -0.02, 0.04, "model ahead by 0.0100, within noise"),
])
def test_verdicts_say_within_noise_when_the_miss_is_under_the_half_width(mean, low, high, words):
    assert quality.verdict(mean, low, high).startswith(words)


def evals(users: list[int]) -> UserEval:
    n = len(users)
    return UserEval(10, np.array(users), np.zeros(n), np.zeros(n), np.zeros(n, bool), np.full(n, np.nan), 0.0, 5)


def test_a_paired_comparison_needs_the_same_users():
    assert quality.same_users({"a": evals([1, 2]), "b": evals([1, 2])}).tolist() == [1, 2]
    with pytest.raises(ValueError, match="b was scored on other test users"):
        quality.same_users({"a": evals([1, 2]), "b": evals([1, 3])})
