"""Auto-revert: the pure hysteresis rule, then champion vs previous through real MLflow on SQLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recsys_retrain import monitor
from recsys_retrain.evaluate import UserEval
from recsys_retrain.monitor import WindowCheck, compare_window, decide_revert
from recsys_retrain.registry import aliases, candidates, promotion
from recsys_retrain.registry.client import connect
from recsys_retrain.settings import MonitorSettings, Settings

M = MonitorSettings(threshold=0.01, consecutive=2)
N = 300
RNG = np.random.default_rng(0)
BASE = np.clip(RNG.normal(0.3, 0.2, N), 0, 1)


def ev(ndcg) -> UserEval:
    z = np.zeros(N)
    return UserEval(10, np.arange(N), np.asarray(ndcg, float), z, z.astype(bool), z * np.nan, 0.3, 100)


def check(window: int, worse: bool, champion: int = 2, previous: int = 1) -> WindowCheck:
    return WindowCheck(f"2024-01-{window:02d}/2024-01-{window + 1:02d}", champion, previous, 0.2, 0.3, -0.1,
                       -0.12, -0.08, N, 0.01, worse, f"w{window} {'worse' if worse else 'ok'}")


def test_a_significantly_worse_champion_counts_a_noisy_one_does_not():
    bad = compare_window(ev(BASE - 0.05), ev(BASE), M, window="a/2024-01-08", champion_version=2, previous_version=1)
    assert bad.worse and bad.mean_delta == pytest.approx(-0.05) and bad.ci_high < 0
    noise = RNG.normal(0, 0.3, N)
    noisy = compare_window(ev(BASE + noise - noise.mean() - 0.02), ev(BASE), M, window="a/2024-01-08",
                           champion_version=2, previous_version=1)
    assert noisy.mean_delta == pytest.approx(-0.02) and noisy.ci_high > 0 and not noisy.worse
    small = compare_window(ev(BASE - 0.005), ev(BASE), M, window="a/2024-01-08", champion_version=2,
                           previous_version=1)
    assert small.ci_high < 0 and not small.worse  # significant, but below the threshold


def test_drift_that_hurts_both_models_alike_is_not_a_regression():
    shifted = compare_window(ev(BASE * 0.3), ev(BASE * 0.3), M, window="a/2024-01-08", champion_version=2,
                             previous_version=1)
    assert not shifted.worse and shifted.mean_delta == 0


@pytest.mark.parametrize(
    "pattern,revert",
    [([True], False), ([True, True], True), ([True, False, True], False), ([False, True, True], True),
     ([True, True, False], False)],
    ids=["one-window", "two-in-a-row", "interrupted", "two-after-ok", "recovered"],
)
def test_revert_needs_consecutive_worse_windows(pattern, revert):
    d = decide_revert([check(i + 1, w) for i, w in enumerate(pattern)], M)
    assert d.revert is revert and d.required == 2
    if revert:
        assert "2 consecutive" in d.reason and len(d.windows) == 2


def test_windows_of_another_champion_pair_do_not_count():
    d = decide_revert([check(1, True, champion=5), check(2, True)], M)
    assert not d.revert and d.consecutive == 1


# --- through MLflow ---------------------------------------------------------------------


class TableModel(nn.Module):
    """Scores given per user: the registry pickles it like a real Recommender."""

    def __init__(self, table: torch.Tensor, catalogue: pd.DataFrame) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.catalogue = catalogue

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return self.table[torch.as_tensor(users["user_id"].to_numpy())]


USERS, ITEMS = 120, 60
CATALOGUE = pd.DataFrame({"item_id": np.arange(ITEMS)})
TASTE = torch.from_numpy(np.random.default_rng(1).random((USERS, ITEMS))).float()


def window_frame(week: int, seed: int) -> pd.DataFrame:
    """Each user takes 3 items from their 8 favourite ones (by TASTE) during the week."""
    rng = np.random.default_rng(seed)
    fav = torch.topk(TASTE, 8, dim=1).indices.numpy()
    rows = [(u, int(i)) for u in range(USERS) for i in rng.choice(fav[u], 3, replace=False)]
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(weeks=week)
    return pd.DataFrame({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows], "timestamp": ts,
                         "user_gender": "F", "user_age": 30, "user_occupation": "x"})


def window_name(week: int) -> str:
    start = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(weeks=week)
    return f"{start.isoformat()}/{(start + pd.Timedelta(weeks=1)).isoformat()}"


def register(s: Settings, table: torch.Tensor, window: str) -> int:
    cand = candidates.log_candidate(TableModel(table, CATALOGUE), settings=s, window=window, params={}, metrics={})
    return cand.version


def test_a_degrading_champion_is_reverted_after_two_windows_once(settings):
    good = register(settings, TASTE, "w0")
    bad = register(settings, torch.rand(USERS, ITEMS, generator=torch.Generator().manual_seed(3)), "w1")
    promotion.promote(settings, good, reason="first")
    promotion.promote(settings, bad, reason="test: a bad champion")
    history = window_frame(0, 0)

    first = monitor.check_window(settings, history, window_frame(1, 1), window_name(1))
    assert not first.revert and first.consecutive == 1 and first.windows[-1].worse
    assert candidates.champion(settings).version == bad

    second = monitor.check_window(settings, history, window_frame(2, 2), window_name(2))
    assert second.revert and second.reverted and second.consecutive == 2
    assert candidates.champion(settings).version == good and candidates.alias(settings, "previous") is None
    assert promotion.reverted_on(settings, bad) == window_name(2)

    again = monitor.check_window(settings, history, window_frame(2, 2), window_name(2))  # a retried task
    assert not again.revert and "already reverted" in again.reason
    assert candidates.champion(settings).version == good
    revert_moves = [m for m in aliases.history(settings) if "revert" in m.reason]
    assert {(m.alias, m.from_version, m.to_version) for m in revert_moves} == {
        ("champion", bad, good), ("previous", good, None),
    }
    assert revert_moves[0].actor.startswith("monitor (") and "consecutive" in revert_moves[0].reason


def test_a_sound_champion_is_never_reverted(settings):
    v1 = register(settings, TASTE, "w0")
    v2 = register(settings, TASTE + 0.01 * torch.rand(USERS, ITEMS, generator=torch.Generator().manual_seed(4)), "w1")
    promotion.promote(settings, v1, reason="first")
    promotion.promote(settings, v2, reason="second")
    for week in (1, 2, 3):
        d = monitor.check_window(settings, window_frame(0, 0), window_frame(week, week), window_name(week))
        assert not d.revert
    assert candidates.champion(settings).version == v2
    assert len(monitor.recorded_checks(settings, v2)) == 3


def test_an_unloadable_previous_version_gives_a_clean_no_revert(settings):
    good = register(settings, TASTE, "w0")
    bad = register(settings, torch.rand(USERS, ITEMS, generator=torch.Generator().manual_seed(3)), "w1")
    promotion.promote(settings, good, reason="first")
    promotion.promote(settings, bad, reason="second")
    uri = connect(settings).get_model_version_download_uri(settings.model_name, str(good))
    for path in Path(uri.removeprefix("file://")).rglob("*.pth"):
        path.write_bytes(b"not a pickle")

    decision = monitor.check_window(settings, window_frame(0, 0), window_frame(1, 1), window_name(1))
    assert not decision.revert and f"v{good} cannot be loaded" in decision.reason
    assert candidates.champion(settings).version == bad
