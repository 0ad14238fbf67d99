"""Fast checks of the decision benchmark's helpers (no training, no MLflow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
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
