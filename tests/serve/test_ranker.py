"""recsys_retrain.serve.ranker: a request's top-K is the evaluation's ranking, unknown users get recent popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.data import store
from recsys_retrain.evaluate import holdout_users
from recsys_retrain.model import RECENT_PRIOR
from recsys_retrain.serve.ranker import MODEL, POPULAR, Ranker, requests_from_history
from tests.serve.conftest import END


@pytest.fixture(scope="module")
def history(served_repo):
    return store.read_events(served_repo, pd.Timestamp("1970-01-01", tz="UTC"), END)


@pytest.fixture(scope="module")
def requests(served_repo, history):
    next_week = store.pull_window(served_repo, END - pd.Timedelta(days=7), END)
    users = holdout_users(history[history["timestamp"] < END - pd.Timedelta(days=7)], next_week)
    return requests_from_history(users, history, cap=100)


def test_served_scores_are_the_evaluations(recommender, history, requests):
    users = requests[["user_id", "user_gender", "user_age", "user_occupation"]]
    assert torch.equal(Ranker(recommender).scores(requests), recommender.score(users, history))


def test_top_k_is_the_evaluations_ranking_with_seen_items_left_out(recommender, history, requests):
    expected = recommender.score(requests[["user_id", "user_gender", "user_age", "user_occupation"]], history)
    seen = torch.zeros_like(expected, dtype=torch.bool)
    rows = pd.Index(recommender.catalogue["item_id"])
    for i, items in enumerate(requests["seen_items"]):
        seen[i, rows.get_indexer(items)] = True
    top = torch.topk(expected.masked_fill(seen, float("-inf")), 10).indices.numpy()
    answer = Ranker(recommender, chunk=37).top_k(requests, k=10).frame  # chunks of users change nothing
    assert [list(recommender.catalogue["item_id"].to_numpy()[t]) for t in top] == answer["item_ids"].tolist()
    assert all(not set(items) & set(s) for items, s in zip(answer["item_ids"], requests["seen_items"]))
    assert set(answer["source"]) == {MODEL}


def test_seen_items_come_back_when_exclusion_is_off(recommender, requests):
    ranker = Ranker(recommender)
    kept = ranker.top_k(requests, k=50, exclude_seen=False).frame
    assert any(set(items) & set(s) for items, s in zip(kept["item_ids"], requests["seen_items"]))


def test_an_unknown_user_gets_recent_popularity_and_says_so(recommender, requests):
    stranger = requests.iloc[:1].assign(user_id=10**9, recent_items=[[]], seen_items=[[]], known=False)
    answer = Ranker(recommender).top_k(pd.concat([requests.iloc[:2], stranger], ignore_index=True), k=5).frame
    share = pd.Series(recommender.prior_features[:, RECENT_PRIOR], index=recommender.catalogue["item_id"])
    assert answer.loc[2, "source"] == POPULAR and answer.loc[:1, "source"].tolist() == [MODEL, MODEL]
    assert answer.loc[2, "scores"] == pytest.approx(np.sort(share.to_numpy())[::-1][:5].tolist())  # the 5 largest shares
    assert share[answer.loc[2, "item_ids"]].tolist() == pytest.approx(answer.loc[2, "scores"])


def test_items_the_model_never_saw_are_left_out(recommender, requests):
    catalogue = set(recommender.catalogue["item_id"])
    late = requests.iloc[:3].assign(recent_items=lambda f: f["recent_items"].map(lambda r: r + [10**7]))
    answer = Ranker(recommender).top_k(late, k=recommender.catalogue.shape[0]).frame
    assert all(set(items) <= catalogue for items in answer["item_ids"])


def test_k_is_checked_and_capped(recommender, requests):
    with pytest.raises(ValueError, match="k must be at least 1"):
        Ranker(recommender).top_k(requests.iloc[:1], k=0)
    assert len(Ranker(recommender).top_k(requests.iloc[:1], k=10**6, exclude_seen=False).frame.loc[0, "item_ids"]) == len(
        recommender.catalogue)
