"""recsys_retrain.serve.online: the online store answers a request with the point-in-time offline features."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from recsys_retrain.data import store
from recsys_retrain.data.ingest import ingest
from recsys_retrain.serve.online import OnlineReader, offline_requests, online_requests
from recsys_retrain.serve.ranker import requests_from_history
from tests.serve.conftest import END

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def some_users(repo, end, n=60) -> list[int]:
    """Users active in the last week, users idle for months, and one the store never saw."""
    history = store.read_events(repo, EPOCH, end)
    last = history.groupby("user_id")["timestamp"].max().sort_values()
    return [*last.index[:n // 2].tolist(), *last.index[-n // 2:].tolist(), 10**9]


def test_online_read_equals_the_point_in_time_offline_features(served_repo):
    users = some_users(served_repo, END)
    online = online_requests(store.feature_store(served_repo), users)
    offline = offline_requests(served_repo, users, END)
    pd.testing.assert_frame_equal(online, offline)
    assert online["known"].tolist() == [True] * (len(users) - 1) + [False]


def test_the_serving_reader_reads_what_feast_get_online_features_reads(served_repo):
    users = some_users(served_repo, END)
    feast_store = store.feature_store(served_repo)
    pd.testing.assert_frame_equal(online_requests(OnlineReader(feast_store), users), online_requests(feast_store, users))


def test_the_history_the_store_holds_is_the_logs(served_repo):
    users = some_users(served_repo, END)[:-1]
    history = store.read_events(served_repo, EPOCH, END)
    profiles = store.user_features(served_repo, users, END)
    expected = requests_from_history(profiles, history, cap=100).set_index("user_id").loc[users].reset_index()
    online = online_requests(store.feature_store(served_repo), users)
    pd.testing.assert_frame_equal(online, expected, check_dtype=False)


@pytest.mark.slow
def test_after_an_ingest_online_and_offline_still_agree(served_repo, movielens, tmp_path):
    repo = tmp_path / "features"
    shutil.copytree(served_repo, repo)
    week = movielens.interactions[(movielens.interactions["timestamp"] >= END)
                                  & (movielens.interactions["timestamp"] < END + pd.Timedelta(days=7))]
    ingest(week, repo)
    moved = int(week["user_id"].iloc[0])
    users = [moved, *some_users(repo, END + pd.Timedelta(days=7))]
    online = online_requests(store.feature_store(repo), users)
    pd.testing.assert_frame_equal(online, offline_requests(repo, users, END + pd.Timedelta(days=7)))
    assert set(week.loc[week["user_id"] == moved, "item_id"]) <= set(online.loc[0, "seen_items"])  # the week arrived
    before = online_requests(store.feature_store(served_repo), [moved])
    assert not set(week.loc[week["user_id"] == moved, "item_id"]) <= set(before.loc[0, "seen_items"])
