"""recsys_retrain.data.features: rolling features computed from earlier days only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tests.conftest import copy_feature_repo

from recsys_retrain.data.features import WINDOW_COLUMNS
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.store import feast_point_in_time, pull_window

from tests.data.conftest import DAY, assert_features_from_the_past, events, raw


class TestRollingFeatures:
    def test_a_later_event_never_leaks_into_any_feature(self, tmp_path: Path) -> None:
        """Same log with and without later events (same day and after): earlier rows identical."""
        early = events(
            (1, 10, "2024-03-01 09:00"), (2, 10, "2024-03-01 10:00"), (1, 11, "2024-03-05 09:00"),
            (2, 12, "2024-03-20 09:00"), (1, 10, "2024-04-10 09:00"),
        )
        leaky = events((3, 10, "2024-04-10 09:30"), (1, 12, "2024-04-10 10:00"), (3, 11, "2024-04-11 00:00"))
        without, with_later = copy_feature_repo(tmp_path / "a"), copy_feature_repo(tmp_path / "b")
        bootstrap_feature_repo(raw(early), without)
        bootstrap_feature_repo(raw(pd.concat([early, leaky], ignore_index=True)), with_later)
        a = pull_window(without, "2024-03-01", "2024-04-10 09:01")
        b = pull_window(with_later, "2024-03-01", "2024-04-10 09:01")
        pd.testing.assert_frame_equal(a, b)
        last = b.iloc[-1]  # user 1, item 10 on 2024-04-10: sees 2024-03-01..04-09 only
        assert (last.user_n_interactions, last.user_interactions_30d, last.user_days_since_last) == (2, 0, 36)
        assert (last.item_n_interactions, last.item_interactions_30d, last.item_days_since_first) == (2, 0, 40)
        assert last.user_distinct_items == 2 and last.item_mean_rating == 4.0
        full = pull_window(with_later, "2024-03-01", "2024-05-01")
        for row in full.itertuples():
            assert_features_from_the_past(row, pd.concat([early, leaky], ignore_index=True))

    def test_fast_join_equals_feast_historical_retrieval(self, feature_repo: Path) -> None:
        rng = np.random.default_rng(0)
        n = 300
        ts = DAY + pd.to_timedelta(rng.integers(0, 40 * 86400, n), unit="s")
        log = pd.DataFrame({"user_id": rng.integers(1, 15, n), "item_id": rng.integers(10, 30, n), "timestamp": ts})
        log = log.assign(rating=rng.integers(1, 6, n).astype(float), timestamp=log.timestamp.astype("datetime64[ns, UTC]"))
        bootstrap_feature_repo(raw(log.drop_duplicates(["user_id", "item_id", "timestamp"])), feature_repo)
        fast = pull_window(feature_repo, "2024-03-10", "2024-04-15")
        from recsys_retrain.data.store import feature_store

        store = feature_store(feature_repo)
        slow = fast[["user_id", "item_id", "timestamp", "rating"]].rename(columns={"timestamp": "event_timestamp"})
        for key in ("user_id", "item_id"):
            slow = slow.merge(feast_point_in_time(store, slow[[key, "event_timestamp"]], key), on=[key, "event_timestamp"])
        slow = slow.rename(columns={"event_timestamp": "timestamp"})[fast.columns]
        slow = slow.astype(fast.dtypes.to_dict())
        pd.testing.assert_frame_equal(fast, slow.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True))

    def test_service_v1_returns_the_v1_columns(self, ml_repo: Path) -> None:
        window = pull_window(ml_repo, "1998-01-01", "1998-01-02", service="two_tower_v1")
        assert list(window.columns) == WINDOW_COLUMNS[:11]
