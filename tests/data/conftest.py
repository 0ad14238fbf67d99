"""Shared data for the tests of recsys_retrain.data: tiny event logs and a bootstrapped MovieLens repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData



DAY = pd.Timestamp("2024-03-01", tz="UTC")


def events(*rows: tuple[int, int, str]) -> pd.DataFrame:
    """(user, item, time) rows -> normalised interactions, rating 4."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ts = pd.to_datetime(df["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return df.assign(timestamp=ts, rating=4.0).astype({"user_id": "int64", "item_id": "int64"})


def random_log(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` events of 15 users on 25 items over 40 days, a few on the same second, ratings 1-5."""
    rng = np.random.default_rng(seed)
    ts = DAY + pd.to_timedelta(rng.integers(0, 40 * 86400, n) // 600 * 600, unit="s")
    log = pd.DataFrame({"user_id": rng.integers(1, 16, n), "item_id": rng.integers(10, 35, n), "timestamp": ts})
    log = log.assign(rating=rng.integers(1, 6, n).astype(float), timestamp=log.timestamp.astype("datetime64[ns, UTC]"))
    return log.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)


def raw(inter: pd.DataFrame) -> RawData:
    users = pd.DataFrame({"user_id": [1], "age": [30], "gender": ["F"], "occupation": ["writer"]})
    items = pd.DataFrame({"item_id": [10], "genres": ["Drama"], "release_year": [1999]})
    return RawData(inter, users, items)


@pytest.fixture(scope="module")
def ml_repo(movielens: RawData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All of MovieLens-100K bootstrapped into a throwaway copy of features/."""
    repo = copy_feature_repo(tmp_path_factory.mktemp("ml") / "features")
    bootstrap_feature_repo(movielens, repo)
    return repo


def assert_features_from_the_past(row, inter: pd.DataFrame) -> None:
    """Every rolling feature of a window row, recomputed by brute force from earlier days only."""
    day = row.timestamp.floor("D")
    before = inter[inter.timestamp < day]
    mine, its = before[before.user_id == row.user_id], before[before.item_id == row.item_id]
    def recent(df: pd.DataFrame, days: int) -> int:
        return int((df.timestamp >= day - pd.Timedelta(days=days)).sum())
    assert row.user_n_interactions == len(mine) and row.item_n_interactions == len(its)
    assert (row.user_interactions_7d, row.user_interactions_30d) == (recent(mine, 7), recent(mine, 30))
    assert (row.item_interactions_7d, row.item_interactions_30d) == (recent(its, 7), recent(its, 30))
    assert row.user_distinct_items == mine.item_id.nunique()
    assert row.user_mean_rating == pytest.approx(mine.rating.mean() if len(mine) else 0.0)
    assert row.item_mean_rating == pytest.approx(its.rating.mean() if len(its) else 0.0)
    last = (day - mine.timestamp.max().floor("D")).days if len(mine) else -1
    first = (day - its.timestamp.min().floor("D")).days if len(its) else -1
    assert (row.user_days_since_last, row.item_days_since_first) == (last, first)
    recent30 = before[before.timestamp >= day - pd.Timedelta(days=30)].item_id.value_counts()
    assert row.item_popularity_rank == 1 + int((recent30 > recent(its, 30)).sum())
