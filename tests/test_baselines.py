"""The simple baselines the model must beat, on data small enough to rank by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_retrain.baselines import EASE, MostPopular, RecentPopular
from recsys_retrain.evaluate import evaluate

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2000-01-01", tz="UTC")


def log(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, day) rows as an interaction frame."""
    return pd.DataFrame([{"user_id": u, "item_id": i, "timestamp": T0 + d * DAY} for u, i, d in rows])


CATALOGUE = pd.DataFrame({"item_id": [4, 3, 2, 1]})  # unsorted on purpose: scores follow item_id order
# item 1: popular long ago; item 2: popular lately; item 3: one recent row; item 4: never seen
TRAIN = log([(1, 1, 0), (2, 1, 0), (3, 1, 1), (4, 1, 1), (1, 2, 25), (2, 2, 26), (3, 2, 29), (4, 3, 28)])


def ranking(model, n_users: int = 1) -> list[int]:
    scores = model.score(pd.DataFrame({"user_id": range(100, 100 + n_users)}))
    assert scores.shape == (n_users, len(CATALOGUE))
    assert (scores == scores[0]).all()  # one ranking for every user
    return [int(model.catalogue["item_id"][j]) for j in scores[0].argsort(descending=True).tolist()]


def test_recent_popularity_counts_only_the_last_days_of_the_training_data():
    assert ranking(RecentPopular(TRAIN, CATALOGUE, days=7), 3) == [2, 3, 1, 4]
    assert ranking(MostPopular(TRAIN, CATALOGUE)) == [1, 2, 3, 4]


def test_a_window_longer_than_the_data_is_all_time_popularity():
    assert ranking(RecentPopular(TRAIN, CATALOGUE, days=365)) == ranking(MostPopular(TRAIN, CATALOGUE))


def test_ties_in_the_window_fall_back_to_all_time_popularity():
    # in the last 2 days items 2 and 3 have one row each; item 2 has more rows overall
    assert ranking(RecentPopular(TRAIN, CATALOGUE, days=2)) == [2, 3, 1, 4]
    # nothing but item 2 in the last day; items 1, 3, 4 follow by all-time count
    assert ranking(RecentPopular(TRAIN, CATALOGUE, days=0.5)) == [2, 1, 3, 4]


def test_the_window_must_be_positive():
    with pytest.raises(ValueError, match="days must be positive"):
        RecentPopular(TRAIN, CATALOGUE, days=0)


def test_recent_popularity_ranks_the_catalogue_in_the_evaluation_harness():
    history = TRAIN.assign(user_gender="M", user_age=25, user_occupation="x")
    holdout = log([(5, 2, 30), (6, 3, 30), (6, 1, 30)]).assign(user_gender="F", user_age=35, user_occupation="y")
    recent = evaluate(RecentPopular(history, CATALOGUE, days=7), history, holdout)
    ease = evaluate(EASE(history, CATALOGUE, lam=1.0), history, holdout)
    assert recent.n_users == ease.n_users == 2 and recent.n_cold_users == 2
    # user 5 wants item 2 (ranked first); user 6 wants items 3 and 1 (ranked second and third)
    assert recent.ndcg > ease.ndcg  # cold users: EASE falls back to all-time popularity, item 2 second
