"""The serving blend: the grid's NDCG on a tail, the best blend chosen, the model keeps its own blend."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from recsys_retrain.evaluate import user_metrics
from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower
from recsys_retrain.train.blend import BLEND_GRID, best_blend, blend_ndcg
from tests.train.worlds import synthetic_world


class TestBestBlend:
    def test_the_highest_ndcg_wins_and_a_tie_keeps_more_of_the_model(self):
        assert best_blend({0.0: 0.2, 0.5: 0.3, 1.0: 0.25}) == 0.5
        assert best_blend({0.0: 0.3, 0.9: 0.3}) == 0.0

    def test_a_tail_without_users_keeps_the_model(self):
        assert best_blend({0.0: math.nan, 1.0: math.nan}) == 0.0
        assert best_blend({}) == 0.0


def test_each_blend_is_scored_on_the_tail_and_the_model_keeps_its_own():
    history, catalogue = synthetic_world()
    later, _ = synthetic_world(seed=1)
    later = later.assign(timestamp=later["timestamp"] + pd.Timedelta(days=1))
    encoder = FeatureEncoder.fit(history, catalogue)
    torch.manual_seed(0)
    model = Recommender(build_two_tower(encoder, dim=8), encoder, catalogue)
    scores = blend_ndcg(model, history, later)
    assert list(scores) == list(BLEND_GRID) and model.blend == 0.0
    model.blend = 1.0
    assert scores[1.0] == pytest.approx(user_metrics(model, history, later, 10).mean_ndcg)
