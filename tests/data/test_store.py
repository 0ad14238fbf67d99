"""recsys_retrain.data.store: point-in-time windows, as Feast's retrieval would give them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.features import WINDOW_COLUMNS
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.data.store import item_catalogue, pull_window, user_features
from recsys_retrain.errors import DataError

from tests.data.conftest import DAY, assert_features_from_the_past, events, raw


class TestPointInTime:
    def test_counts_never_include_the_same_day_or_later(self, feature_repo: Path) -> None:
        early = events(
            (1, 10, "2024-03-01 09:00"), (1, 11, "2024-03-01 09:00"), (1, 10, "2024-03-01 18:00"),
            (2, 10, "2024-03-02 00:00"), (1, 12, "2024-03-03 08:00"),
        )
        later = events((1, 10, "2024-03-03 07:00"), (1, 11, "2024-03-09 12:00"))
        bootstrap_feature_repo(raw(pd.concat([early, later], ignore_index=True)), feature_repo)
        window = pull_window(feature_repo, "2024-03-01", "2024-03-04").set_index(["user_id", "item_id", "timestamp"])
        # Same-second events of one user with two items both survive the join.
        assert len(window) == 6
        n = window[["user_n_interactions", "item_n_interactions"]]
        assert n.loc[(1, 10, DAY + pd.Timedelta(hours=18))].tolist() == [0, 0]  # own day is invisible
        assert n.loc[(2, 10, DAY + pd.Timedelta(days=1))].tolist() == [0, 2]  # day 1 visible at 00:00 next day
        # Day 3: the 07:00 event of the same morning must not count for the 08:00 one.
        assert n.loc[(1, 12, DAY + pd.Timedelta(days=2, hours=8))].tolist() == [3, 0]
        assert window.loc[(1, 10, DAY + pd.Timedelta(hours=9)), "user_age"] == 30

    def test_later_events_do_not_change_earlier_features(self, tmp_path: Path) -> None:
        early = events((1, 10, "2024-03-01 09:00"), (2, 10, "2024-03-02 09:00"), (1, 10, "2024-03-03 09:00"))
        later = events(*[(u, 10, "2024-03-03 10:00") for u in range(3, 9)])
        without = copy_feature_repo(tmp_path / "without")
        with_later = copy_feature_repo(tmp_path / "with")
        bootstrap_feature_repo(raw(early), without)
        bootstrap_feature_repo(raw(pd.concat([early, later], ignore_index=True)), with_later)
        a = pull_window(without, "2024-03-01", "2024-03-03 09:30")
        b = pull_window(with_later, "2024-03-01", "2024-03-03 09:30")
        pd.testing.assert_frame_equal(a, b)
        assert b.item_n_interactions.tolist() == [0, 1, 2]


class TestRetrieval:
    def test_one_week_of_movielens(self, ml_repo: Path, movielens: RawData) -> None:
        t0, t1 = pd.Timestamp("1998-01-01", tz="UTC"), pd.Timestamp("1998-01-08", tz="UTC")
        window = pull_window(ml_repo, t0.to_pydatetime(), "1998-01-08T00:00:00")
        inter = movielens.interactions
        assert len(window) == inter.timestamp.between(t0, t1, inclusive="left").sum() > 1000
        assert list(window.columns) == WINDOW_COLUMNS and not window.isna().any().any()
        assert window.timestamp.is_monotonic_increasing
        assert dict(list(window.dtypes.astype(str).to_dict().items())[:11]) == {
            "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
            "user_age": "int64", "user_gender": "object", "user_occupation": "object", "user_n_interactions": "int64",
            "item_genres": "object", "item_release_year": "int64", "item_n_interactions": "int64",
        }
        for row in window.sample(25, random_state=0).itertuples():
            assert_features_from_the_past(row, inter)

    def test_empty_window_has_the_columns(self, ml_repo: Path) -> None:
        window = pull_window(ml_repo, "2030-01-01", "2030-01-08")
        assert window.empty and list(window.columns) == WINDOW_COLUMNS
        assert str(window.timestamp.dtype) == "datetime64[ns, UTC]"

    def test_item_catalogue_and_user_features_as_of(self, ml_repo: Path, movielens: RawData) -> None:
        as_of = "1998-01-08"
        cat = item_catalogue(ml_repo, as_of)
        assert list(cat.columns)[:4] == ["item_id", "item_genres", "item_release_year", "item_n_interactions"]
        assert cat.item_id.tolist() == list(range(1, 1683))
        before = movielens.interactions[movielens.interactions.timestamp < pd.Timestamp(as_of, tz="UTC")]
        assert cat.item_n_interactions.tolist() == before.item_id.value_counts().reindex(cat.item_id, fill_value=0).tolist()
        users = user_features(ml_repo, [99999, 1], datetime(1998, 1, 8))
        assert users.to_dict("records")[1] == {
            "user_id": 99999, "user_age": 0, "user_gender": "unknown", "user_occupation": "unknown",
            "user_n_interactions": 0, "user_interactions_7d": 0, "user_interactions_30d": 0, "user_distinct_items": 0,
            "user_mean_rating": 0.0, "user_days_since_last": -1,
        }
        assert users.user_n_interactions[0] == (before.user_id == 1).sum() > 0

    def test_unbootstrapped_repo_is_a_clear_error(self, feature_repo: Path) -> None:
        with pytest.raises(DataError, match="not bootstrapped"):
            pull_window(feature_repo, "2024-01-01", "2024-01-02")
