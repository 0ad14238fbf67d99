"""The two-tower model's item prior: counted before the scoring time, starting as recent popularity, trained."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.baselines import RecentPopular
from recsys_retrain.model import (
    PRIOR_DAYS,
    PRIOR_INIT,
    RECENT_PRIOR,
    FeatureEncoder,
    Recommender,
    TwoTowerTrainTask,
    build_two_tower,
    item_prior,
)

T0 = pd.Timestamp("2000-03-01", tz="UTC")
CATALOGUE = pd.DataFrame({"item_id": np.arange(1, 21), "item_genres": "Drama", "item_release_year": 1990})
COLD = pd.DataFrame({"user_id": [999], "user_gender": ["F"], "user_age": [30], "user_occupation": ["x"]})


def events(counts: dict[int, int], days_before: float, end: pd.Timestamp = T0) -> pd.DataFrame:
    """``counts[item]`` interactions of each item, ``days_before`` days before ``end``, one user each."""
    items = [i for i, n in counts.items() for _ in range(n)]
    return pd.DataFrame({
        "user_id": np.arange(len(items)), "item_id": items,
        "timestamp": end - pd.Timedelta(days=days_before), "user_gender": "M", "user_age": 30, "user_occupation": "x",
    })


def popular_world() -> pd.DataFrame:
    """Items 2k-1 and 2k interacted with 2 ** k times in the last week; items 1-5 most often two months ago."""
    recent = events({i: 2 ** ((i + 1) // 2) for i in range(1, 21)}, days_before=3)
    old = events({i: 50 for i in range(1, 6)}, days_before=60)
    return pd.concat([old, recent], ignore_index=True)


class TestItemPrior:
    def test_only_interactions_strictly_before_the_end_count(self):
        before = events({1: 3, 2: 1}, days_before=1)
        at_and_after = pd.concat([events({2: 5}, days_before=0), events({2: 9}, days_before=-2)])
        with_later = item_prior(pd.concat([before, at_and_after]), CATALOGUE, end=T0)
        assert np.array_equal(with_later, item_prior(before, CATALOGUE, end=T0))

    def test_each_window_counts_its_own_days_and_the_last_column_all_of_them(self):
        seen = pd.concat([events({1: 4}, days_before=10), events({2: 4}, days_before=2)])
        prior = item_prior(seen, CATALOGUE, end=T0)
        assert PRIOR_DAYS == (7, 28, None)
        assert prior[1, 0] > prior[0, 0]  # 7 days: item 2 only
        assert prior[0, 1] == pytest.approx(prior[1, 1])  # 28 days: both
        assert prior[0, 2] == pytest.approx(prior[1, 2])

    def test_shares_are_smoothed_probabilities(self):
        prior = item_prior(popular_world(), CATALOGUE)
        assert np.allclose(np.exp(prior).sum(axis=0), 1.0, atol=1e-5)
        assert np.isfinite(prior).all()
        assert prior.shape == (len(CATALOGUE), len(PRIOR_DAYS)) and prior.dtype == np.float32

    def test_no_history_is_every_item_alike(self):
        prior = item_prior(pd.DataFrame(), CATALOGUE)
        assert np.allclose(prior, -np.log(len(CATALOGUE)))


def recommender(history: pd.DataFrame, seed: int = 0) -> Recommender:
    encoder = FeatureEncoder.fit(history, CATALOGUE)
    torch.manual_seed(seed)
    return Recommender(build_two_tower(encoder, dim=8), encoder, CATALOGUE)


class TestTwoTowerPrior:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_the_untrained_model_ranks_like_recent_popularity_for_a_cold_user(self, seed):
        history = popular_world()
        model = recommender(history, seed)
        assert model.model.prior.weight.tolist() == pytest.approx(list(PRIOR_INIT))
        ours = model.score(COLD, history)[0].argsort(descending=True)[:10].numpy()
        theirs = RecentPopular(history, CATALOGUE, days=28).score(COLD)[0].argsort(descending=True)[:10].numpy()
        assert set(ours) == set(theirs)
        recent = model.encoder.recent_counts(history, CATALOGUE)
        assert (np.diff(recent[ours]) <= 0).all()  # in recent popularity's order (equal counts in either order)

    def test_the_prior_is_added_to_every_users_dot_product(self):
        history = popular_world()
        model = recommender(history)
        enc = model.encoder
        users, items = enc.user_kjt(pd.concat([COLD, COLD.assign(user_id=5)])), enc.item_kjt(CATALOGUE)
        features = torch.from_numpy(item_prior(history, CATALOGUE))
        with torch.no_grad():
            plain, with_prior = model.model(users, items), model.model(users, items, features)
        expected = (features * torch.tensor(PRIOR_INIT)).sum(dim=1)
        assert torch.allclose(with_prior - plain, expected.expand_as(plain), atol=1e-5)

    def test_the_prior_weights_receive_a_gradient(self):
        history = popular_world()
        model = recommender(history)
        enc = model.encoder
        task = TwoTowerTrainTask(model.model)
        labels = torch.tensor([0, 19])
        loss, _ = task(enc.user_kjt(pd.concat([COLD, COLD])), enc.item_kjt(CATALOGUE), labels,
                       torch.from_numpy(item_prior(history, CATALOGUE)))
        loss.backward()
        grad = model.model.prior.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


class TestBlend:
    def test_a_full_blend_serves_the_28_day_log_share(self):
        history = popular_world()
        model = recommender(history)
        model.blend = 1.0
        expected = torch.from_numpy(item_prior(history, CATALOGUE)[:, RECENT_PRIOR])
        assert torch.allclose(model.score(COLD, history)[0], expected)

    def test_no_blend_serves_the_model(self):
        history = popular_world()
        model = recommender(history)
        enc = model.encoder
        features = torch.from_numpy(item_prior(history, CATALOGUE))
        with torch.no_grad():
            direct = model.model(enc.user_kjt(COLD, enc.histories(history, COLD["user_id"])), enc.item_kjt(
                CATALOGUE, enc.recent_counts(history, CATALOGUE)), features)
        assert torch.allclose(model.score(COLD, history), direct)

    def test_a_blend_outside_zero_to_one_is_refused(self):
        encoder = FeatureEncoder.fit(popular_world(), CATALOGUE)
        with pytest.raises(ValueError, match="blend must be within"):
            Recommender(build_two_tower(encoder, dim=4), encoder, CATALOGUE, blend=1.5)

    def test_without_history_the_stored_prior_is_used(self):
        history = popular_world()
        encoder = FeatureEncoder.fit(history, CATALOGUE)
        stored = item_prior(history, CATALOGUE)
        model = Recommender(build_two_tower(encoder, dim=8), encoder, CATALOGUE, prior=stored, blend=1.0)
        assert torch.allclose(model.score(COLD)[0], torch.from_numpy(stored[:, RECENT_PRIOR]))
