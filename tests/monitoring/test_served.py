"""recsys_retrain.monitoring.served: the week's served model scored beside fresh baselines on the same users."""

from __future__ import annotations

import json

import pandas as pd

from recsys_retrain.monitoring.served import score_served


def test_the_served_week_is_scored_beside_recent_popularity_and_ease_on_the_same_users(movielens, settings, tmp_path):
    from recsys_retrain.baselines import MostPopular
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.simulate import base_log

    log = base_log(movielens)
    run = tmp_path / "19980112-19980119"
    run.mkdir()
    log[log["timestamp"] < "1998-01-12"].to_parquet(run / "history.parquet")
    week = log[(log["timestamp"] >= "1998-01-12") & (log["timestamp"] < "1998-01-19")]
    week.to_parquet(run / "holdout.parquet")
    movielens.items.to_parquet(run / "catalogue.parquet")
    served = score_served(settings, run, "w")
    assert json.loads((run / "served.json").read_text()) == served
    assert (served["version"], served["ndcg"]) == (None, None)  # no champion yet; the baselines are scored all the same
    assert 0.1 < served["recent_pop_ndcg"] < 0.5 and 0.1 < served["ease_ndcg"] < 0.5
    history = pd.read_parquet(run / "history.parquet")
    users = user_metrics(MostPopular(history, movielens.items), history, week, 10)  # who is scored does not depend on the model
    assert served["users"] == len(users.user_ids) > 50
