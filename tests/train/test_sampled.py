"""Sampled softmax with logQ: the candidate set, its correction, and a model trained with it learns the world's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_retrain.model import FeatureEncoder
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train
from recsys_retrain.train.sampled import NegativeSampler, subset_kjt
from tests.train.worlds import synthetic_world


class TestNegativeSampler:
    def test_positives_are_candidates_and_targets_point_at_them(self):
        sampler = NegativeSampler(np.arange(100) % 30, n_items=30, negatives=5, seed=0)
        target = np.array([29, 3, 3, 17])
        rows, log_q, position = sampler.draw(target)
        assert np.array_equal(rows, np.unique(rows)) and rows[position.numpy()].tolist() == target.tolist()
        assert log_q.shape == (len(rows),) and bool((log_q <= 0).all())

    def test_frequent_items_are_drawn_more_and_corrected_more(self):
        labels = np.r_[np.zeros(900, np.int64), np.arange(1, 101)]  # row 0 is 90 % of the examples
        sampler = NegativeSampler(labels, n_items=101, negatives=20, seed=1)
        drawn = np.concatenate([sampler.draw(np.array([5]))[0] for _ in range(200)])
        assert (drawn == 0).mean() > 3 * (drawn == 50).mean()
        rows, log_q, _ = sampler.draw(np.array([0, 50]))
        assert log_q[np.searchsorted(rows, 0)] > log_q[np.searchsorted(rows, 50)]  # larger Q, larger subtraction

    def test_the_correction_makes_a_frequent_negative_weigh_what_the_full_softmax_gives_it(self):
        """The expected sampled-softmax probability of a frequent item (its gradient as a negative) matches the
        full softmax's with log Q subtracted; without it the item, in nearly every sample among few others, is
        pushed down several times too hard."""
        torch.manual_seed(0)
        logits = torch.randn(400)
        labels = np.r_[np.zeros(3000, np.int64), np.arange(400)]  # row 0 is drawn in nearly every sample
        sampler = NegativeSampler(labels, n_items=400, negatives=40, seed=2)
        full = float(torch.softmax(logits, 0)[0])
        expected = {True: 0.0, False: 0.0}
        for _ in range(500):
            rows, log_q, _ = sampler.draw(np.array([1]))
            for corrected in expected:
                z = logits[torch.from_numpy(rows)] - (log_q if corrected else 0)
                if rows[0] == 0:  # rows are sorted: row 0 comes first when it was drawn (no gradient when not)
                    expected[corrected] += float(torch.softmax(z, 0)[0]) / 500
        assert expected[True] == pytest.approx(full, rel=0.35)
        assert expected[False] > 3 * full


def test_subset_kjt_is_the_item_kjt_of_the_rows():
    _, catalogue = synthetic_world()
    enc = FeatureEncoder.fit(synthetic_world()[0], catalogue)
    recent = np.arange(len(catalogue), dtype=float)
    rows = np.array([5, 0, 17, 59])
    sub = subset_kjt(enc.item_kjt(catalogue, recent), rows)
    want = enc.item_kjt(catalogue.iloc[rows], recent[rows])
    assert sub.keys() == want.keys()
    assert torch.equal(sub.values(), want.values()) and torch.equal(sub.lengths(), want.lengths())


@pytest.mark.slow
def test_a_model_trained_with_sampled_softmax_learns_the_genre_rule(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    settings = TrainSettings(embedding_dim=8, epochs=8, batch_size=64, seed=0, sampled_softmax_above=10, sampled_negatives=8)
    result = train(history, catalogue, tmp_path, settings, progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    model = load_checkpoint(tmp_path / "model.pt")
    users = holdout.drop_duplicates("user_id")
    top = model.catalogue.item_genres.to_numpy()[model.score(users).argmax(dim=1).numpy()]
    assert (top == np.where(users.user_gender.to_numpy() == "F", "A", "B")).mean() >= 0.9
