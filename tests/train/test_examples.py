"""Training examples and their batches: recency weighting keeps the epoch size and favours recent weeks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.model import FeatureEncoder, item_prior
from recsys_retrain.train.examples import catalogue_snapshots, period_of, recency_draws, training_examples
from tests.train.worlds import synthetic_world, taste_change_world


def test_recency_draws_keep_the_epoch_size_and_favour_recent_weeks():
    period = np.repeat([10, 11, 12, 13], 100)
    draws = recency_draws(period, half_life_days=7.0)
    assert recency_draws(period, None) is None
    assert sum(draws.values()) == pytest.approx(len(period), abs=4)
    assert draws[13] == pytest.approx(2 * draws[12], abs=1) and draws[12] == pytest.approx(2 * draws[11], abs=1)
    assert draws[13] > 100 > draws[10] >= 1  # the newest week is drawn more than once, the oldest less


def test_weighted_batches_draw_each_period_as_often_as_asked_and_unweighted_ones_each_example_once():
    history, catalogue = synthetic_world()
    history["timestamp"] += pd.to_timedelta(np.arange(len(history)) % 3 * 7, unit="D")  # three weeks
    examples = training_examples(history, FeatureEncoder.fit(history, catalogue))
    once = np.concatenate(examples.batches(64, np.random.default_rng(0)))
    assert sorted(once) == list(range(len(examples)))
    draws = recency_draws(examples.period, half_life_days=7.0)
    drawn = np.concatenate(examples.batches(64, np.random.default_rng(0), draws))
    weeks, counts = np.unique(examples.period[drawn], return_counts=True)
    assert dict(zip(weeks.tolist(), counts.tolist())) == draws


def test_each_periods_snapshot_counts_only_interactions_before_the_period_starts():
    history, catalogue = taste_change_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    periods = period_of(history["timestamp"])
    snapshots = catalogue_snapshots(history, catalogue, encoder, periods)
    for period, snap in snapshots.items():
        begin = pd.Timestamp(period * 7 * 86_400 * 10**9, tz="UTC")
        before = history[history["timestamp"] < begin]
        assert np.array_equal(snap.prior.numpy(), item_prior(before, catalogue, end=begin))
        # the period's own interactions (and later ones) moved nothing: rewriting them leaves the snapshot alone
        rewritten = history.assign(item_id=np.where(history["timestamp"] >= begin, catalogue["item_id"].iloc[0],
                                                      history["item_id"]))
        again = catalogue_snapshots(rewritten, catalogue, encoder, periods)[period]
        assert np.array_equal(again.prior.numpy(), snap.prior.numpy())
        assert again.items.values().equal(snap.items.values())
    first = min(snapshots)
    assert np.allclose(snapshots[first].prior.numpy(), -np.log(len(catalogue)))  # nothing before the first week


def test_examples_since_a_time_train_on_that_span_with_histories_from_before_it():
    t = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-10", "2020-01-11"], utc=True)
    history = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 10], "timestamp": t, "user_gender": "F",
                            "user_age": 30, "user_occupation": "x"})
    items = pd.DataFrame({"item_id": [10, 11, 12], "item_genres": "Drama", "item_release_year": 1990})
    enc = FeatureEncoder.fit(history, items)
    every, recent = training_examples(history, enc), training_examples(history, enc, since=t[2])
    assert len(every) == 4 and len(recent) == 2
    assert sorted(recent.labels.tolist()) == [0, 2]  # item 12 (user 1) and item 10 (user 2), as catalogue rows
    users, _ = recent.batch(np.arange(2), enc)
    assert users["user_history"].lengths().tolist() == [2, 0]  # user 1's two earlier items, from before the span
