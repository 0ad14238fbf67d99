"""Training under DistributedModelParallel: the fused embedding optimizer really trains.

A synthetic world where women watch genre A and men genre B: a model that learns
anything ranks the right genre first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.evaluate import evaluate
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train
from tests.train.worlds import genre_taste_world, synthetic_world, taste_change_world


def test_train_learns_the_genre_rule_and_checkpoint_round_trips(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    settings = TrainSettings(embedding_dim=8, epochs=8, batch_size=64, seed=0)
    result = train(history, catalogue, tmp_path, settings, progress=False)

    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.n_samples == len(history)
    recommender = load_checkpoint(tmp_path / "model.pt")
    users = holdout.drop_duplicates("user_id")
    scores = recommender.score(users)
    top = recommender.catalogue.item_genres.to_numpy()[scores.argmax(dim=1).numpy()]
    expected = np.where(users.user_gender.to_numpy() == "F", "A", "B")
    assert (top == expected).mean() >= 0.9
    assert evaluate(recommender, history, holdout, k=5).ndcg > 0.1  # random ranking scores ~0.08


def test_a_history_of_items_never_trained_on_still_points_a_new_user_to_its_genre(tmp_path):
    """The genre bag (``user_genres``) generalises where the item bag cannot: the unwatched items' rows never train.
    The new users are unknown to the encoder: id dropout trains the unknown row (without it, 0.25 here)."""
    history, catalogue, unwatched = genre_taste_world()
    settings = TrainSettings(embedding_dim=8, epochs=8, batch_size=64, seed=0, id_dropout=0.1)
    recommender = load_checkpoint(Path(train(history, catalogue, tmp_path, settings, progress=False).checkpoint))
    genres = np.array(list("ABCD") * 5)  # 20 new users, each with a history of four unwatched items of one genre
    seen = pd.concat([unwatched[unwatched.item_genres == g].sample(4, random_state=i).assign(user_id=500 + i)
                      for i, g in enumerate(genres)])
    seen = seen.assign(timestamp=pd.Timestamp("2020-02-01", tz="UTC"))[["user_id", "item_id", "timestamp"]]
    users = pd.DataFrame({"user_id": 500 + np.arange(len(genres)), "user_gender": "F", "user_age": 30,
                          "user_occupation": "other"})
    scores = recommender.score(users, pd.concat([history[["user_id", "item_id", "timestamp"]], seen]))
    scores[:, recommender.catalogue.item_id.isin(seen.item_id).to_numpy()] = -np.inf  # the genre, not the items seen
    top = recommender.catalogue.item_genres.to_numpy()[scores.argmax(dim=1).numpy()]
    assert (top == genres).mean() >= 0.9


def test_training_is_deterministic_for_a_seed(tmp_path):
    history, catalogue = synthetic_world()
    settings = TrainSettings(embedding_dim=8, epochs=2, batch_size=64, seed=3)
    a = train(history, catalogue, tmp_path / "a", settings, progress=False)
    b = train(history, catalogue, tmp_path / "b", settings, progress=False)
    assert a.epoch_losses == pytest.approx(b.epoch_losses)


def test_empty_history_is_refused_with_a_clear_error(tmp_path):
    from recsys_retrain.errors import DataError

    _, catalogue = synthetic_world()
    empty = synthetic_world()[0].iloc[:0]
    with pytest.raises(DataError, match="training window is empty"):
        train(empty, catalogue, tmp_path, TrainSettings(), progress=False)


def test_a_recency_half_life_follows_a_changed_taste_where_uniform_training_keeps_the_old_one(tmp_path):
    history, catalogue = taste_change_world()
    users = history.drop_duplicates("user_id")
    now = np.where(users["user_gender"].to_numpy() == "F", "B", "A")  # the taste of the last two weeks

    def share_following_the_new_taste(half_life: float | None, seed: int) -> float:
        """Scored as served, with each user's history: its item and genre bags say "the old taste" for six weeks of
        eight, so one seed of this 40-user world swings (0.5 to 1.0 with the half-life); the mean of three does not."""
        settings = TrainSettings(embedding_dim=8, epochs=8, batch_size=64, seed=seed, recency_half_life=half_life)
        out = tmp_path / f"{half_life}-{seed}"
        recommender = load_checkpoint(Path(train(history, catalogue, out, settings, progress=False).checkpoint))
        top = recommender.catalogue.item_genres.to_numpy()[recommender.score(users, history).argmax(dim=1).numpy()]
        return float((top == now).mean())

    uniform = np.mean([share_following_the_new_taste(None, seed) for seed in range(3)])
    recent = np.mean([share_following_the_new_taste(7.0, seed) for seed in range(3)])
    assert uniform <= 0.3 and recent >= 0.7
