"""recsys_retrain.profile: DataProfile numbers on hand-checked toys and on MovieLens-100K."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.data.load import RawData
from recsys_retrain.profile import DataProfile, profile


def frame(pairs: list[tuple[int, int]], day: str = "2024-03-01", rating: float = 4.0) -> pd.DataFrame:
    users, items = zip(*pairs)
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(len(pairs)), unit="h")
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts, "rating": rating})


class TestProfile:
    def test_hand_checked_toy(self) -> None:
        # item 1: 6 interactions, items 2..5: 1 each -> 10 interactions on 5 items by 4 users
        pairs = [(u, 1) for u in (1, 2, 3, 4, 1, 2)] + [(1, 2), (2, 3), (3, 4), (4, 5)]
        p = profile(frame(pairs), reference=frame([(1, 1), (9, 2)]), start="2024-03-01", end="2024-03-03")
        assert (p.interactions, p.users, p.items) == (10, 4, 5)
        assert p.density == pytest.approx(10 / 20)
        assert p.top1_share == p.top20_share == pytest.approx(0.6)  # one item is both the top 1% and top 20%
        assert p.long_tail_share == pytest.approx(2 / 5)  # head for 80%: items with 6, 1, 1 -> 3 of 5
        assert p.gini == pytest.approx((2 * np.arange(1, 6) - 6) @ np.array([1, 1, 1, 1, 6]) / (5 * 10))
        assert (p.new_user_rate, p.new_item_rate) == (pytest.approx(3 / 4), pytest.approx(3 / 5))
        assert p.interactions_per_day == pytest.approx(5.0) and p.rating_mean == 4.0 and p.rating_std == 0.0
        assert p.user_activity["p50"] == pytest.approx(2.5)

    def test_even_popularity_has_gini_zero_and_one_item_is_the_head(self) -> None:
        assert profile(frame([(1, 1), (2, 2), (3, 3), (4, 4)])).gini == pytest.approx(0.0)
        only = profile(frame([(1, 7), (2, 7)]))
        assert (only.gini, only.long_tail_share, only.top1_share, only.new_user_rate) == (0.0, 0.0, 1.0, None)

    def test_empty_window(self) -> None:
        p = profile(frame([(1, 1)]).iloc[:0], start="2024-03-01", end="2024-03-08")
        assert (p.interactions, p.users, p.density, p.interactions_per_day) == (0, 0, 0.0, 0.0)

    def test_round_trips_through_json(self) -> None:
        p = profile(frame([(1, 1), (2, 1), (2, 3)]), reference=frame([(1, 1)]))
        again = DataProfile.from_dict(json.loads(json.dumps(p.to_dict())))
        assert again == p
        with pytest.raises(Exception):
            p.users = 3  # frozen

    def test_movielens(self, movielens: RawData) -> None:
        inter = movielens.interactions
        p = profile(inter)
        assert (p.interactions, p.users, p.items) == (100_000, 943, 1682)
        assert p.density == pytest.approx(100_000 / (943 * 1682))
        assert 0.5 < p.gini < 0.8 and p.top20_share > 0.5 and 0.5 < p.long_tail_share < 0.9
        assert p.rating_mean == pytest.approx(inter.rating.mean()) and 1 < p.rating_std < 1.3
        assert p.user_activity["p50"] == inter.user_id.value_counts().median()
