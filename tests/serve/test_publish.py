"""recsys_retrain.serve.publish: the champion's top-K in the online store, one lookup per user; a revert republishes."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from recsys_retrain.data import store
from recsys_retrain.registry import candidates, promotion
from recsys_retrain.serve.online import read_recommendations
from recsys_retrain.serve.publish import active_users, publish_champion
from recsys_retrain.serve.recommend import served_model
from recsys_retrain.settings import Settings
from tests.serve.conftest import END, make_recommender


@pytest.fixture
def world(served_repo, tmp_path) -> Settings:
    repo = tmp_path / "features"
    shutil.copytree(served_repo, repo)
    settings = Settings(home=tmp_path / "home", feature_repo=repo)
    for seed, window in ((0, "1997-12-22/1997-12-29"), (1, "1997-12-29/1998-01-05")):
        candidates.log_candidate(make_recommender(repo, seed=seed), settings=settings, window=window, params={}, metrics={})
    return settings


def lookup(settings: Settings, users: list[int]) -> pd.DataFrame:
    return read_recommendations(store.feature_store(settings.feature_repo), users)


@pytest.mark.slow
def test_publish_writes_the_champions_top_k_and_a_revert_republishes_the_previous(world):
    assert publish_champion(world).reason == "no champion yet: nothing to publish"
    promotion.promote(world, 1, reason="first", actor="test")
    first = publish_champion(world)
    active = active_users(world.feature_repo, world.serve.publish_active_days)
    assert first.written and first.version == 1 and first.users == len(active) > 100
    sample = active[:: max(1, len(active) // 25)]
    lists = lookup(world, sample)
    _, model = served_model(world)
    assert lists["rec_item_ids"].tolist() == model.predict(None, pd.DataFrame({"user_id": sample}))["item_ids"].tolist()
    assert set(lists["rec_version"]) == {1}
    again = publish_champion(world)  # the same champion a week later: the active users' lists are refreshed
    assert again.written and again.reason.startswith("refreshed v1's") and again.users == len(active)
    assert lookup(world, sample)["rec_item_ids"].tolist() == lists["rec_item_ids"].tolist()  # nothing new happened

    promotion.promote(world, 2, reason="better", actor="test")
    assert publish_champion(world).version == 2 and set(lookup(world, sample)["rec_version"]) == {2}
    promotion.revert(world, reason="worse", actor="test")
    back = publish_champion(world)
    assert back.written and back.version == 1 and "replacing v2's" in back.reason
    assert lookup(world, sample)["rec_item_ids"].tolist() == lists["rec_item_ids"].tolist()


def test_active_users_are_those_of_the_last_days(served_repo):
    events = store.read_events(served_repo, END - pd.Timedelta(days=30), END)
    recent = events[events["timestamp"] > events["timestamp"].max() - pd.Timedelta(days=7)]
    assert set(active_users(served_repo, 7)) == set(recent["user_id"]) and len(recent) < len(events)
