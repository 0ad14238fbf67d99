"""Chunked scoring: the same scores as ``Recommender.score``, whatever the chunk; and evaluation in chunks
gives the unchunked result exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.baselines import MostPopular
from recsys_retrain.drift.check import champion_scorer
from recsys_retrain.evaluate import ndcg_at_k, ranking, topk_hits, user_metrics
from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower
from recsys_retrain.scoring import HistoryBags, chunk_scorer

T0 = pd.Timestamp("2000-03-01", tz="UTC")
BUILD = HistoryBags.build.__func__
CATALOGUE = pd.DataFrame({"item_id": np.arange(1, 41), "item_genres": np.where(np.arange(40) % 2, "Drama", "Comedy|War"),
                          "item_release_year": 1950 + np.arange(40)})


def world(n_users: int = 60, n_events: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Random events over 8 weeks before T0 (items skewed towards low ids), with profile columns."""
    rng = np.random.default_rng(seed)
    user = rng.integers(1, n_users + 1, n_events)
    return pd.DataFrame({
        "user_id": user, "item_id": np.minimum(rng.zipf(1.3, n_events), 45),  # ids 41-45: outside the catalogue
        "timestamp": T0 - pd.to_timedelta(rng.uniform(0, 56, n_events), unit="D"),
        "user_gender": np.where(user % 2, "F", "M"), "user_age": 18 + user % 40, "user_occupation": "x",
    }).sort_values("timestamp", ignore_index=True)


def model(history: pd.DataFrame, blend: float = 0.3, seed: int = 0) -> Recommender:
    encoder = FeatureEncoder.fit(history, CATALOGUE)
    torch.manual_seed(seed)
    return Recommender(build_two_tower(encoder, dim=8), encoder, CATALOGUE, blend=blend)


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = T0 - pd.Timedelta(days=7)
    return frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]


class TestChunkScorer:
    def test_history_bags_equal_the_encoders_histories(self):
        history = world()
        enc = FeatureEncoder.fit(history, CATALOGUE)
        ids = np.array([5, 999, 1, 5, 60])  # repeated, unknown and known users, in any order
        values, lengths = HistoryBags.build(enc, history).take(ids)
        want_values, want_lengths = enc.histories(history, ids)
        assert lengths.tolist() == want_lengths.tolist() and values.tolist() == want_values.tolist()

    def test_what_a_history_gives_is_kept_for_that_history_only(self, monkeypatch):
        built = []
        monkeypatch.setattr(HistoryBags, "build", classmethod(lambda cls, enc, h: built.append(len(h)) or BUILD(cls, enc, h)))
        history, other = world(seed=1), world(seed=2)
        users = history.drop_duplicates("user_id").reset_index(drop=True)
        first = chunk_scorer(model(history, seed=0), history)(users)
        again = chunk_scorer(model(history, seed=0), history)(users)  # a new model object, as training's candidates are
        assert len(built) == 1 and torch.equal(first, again)
        elsewhere = chunk_scorer(model(history, seed=0), other)(users)  # another history: computed again, and it shows
        assert len(built) == 2 and not torch.equal(first, elsewhere)
        assert torch.equal(chunk_scorer(model(history, seed=0), history.copy())(users), first)  # a copy: equal, recomputed
        assert len(built) == 3

    @pytest.mark.parametrize("with_history", [True, False])
    def test_chunks_score_exactly_as_score_does(self, with_history):
        history = world()
        rec = model(history)
        users = history.drop_duplicates("user_id").reset_index(drop=True)
        given = history if with_history else None
        full = rec.score(users, given)
        scorer = chunk_scorer(rec, given)
        chunks = torch.cat([scorer(users.iloc[lo:lo + 7]) for lo in range(0, len(users), 7)])
        assert torch.equal(scorer(users), full)
        assert torch.allclose(chunks, full, rtol=0, atol=1e-6)

    def test_other_models_are_called_as_they_are(self):
        history = world()
        pop = MostPopular(history, CATALOGUE)
        users = history.drop_duplicates("user_id")
        assert torch.equal(chunk_scorer(pop, history)(users), pop.score(users, history))


class TestChunkedEvaluation:
    @pytest.mark.parametrize("blend", [0.0, 0.3])
    def test_metrics_do_not_depend_on_the_chunk_size(self, blend):
        history, holdout = split(world())
        rec = model(history, blend)
        whole = user_metrics(rec, history, holdout, k=5, chunk_users=10**6)
        assert whole.n_users > 10
        for chunk in (1, 3, 16):
            chunked = user_metrics(rec, history, holdout, k=5, chunk_users=chunk)
            assert np.array_equal(chunked.user_ids, whole.user_ids)
            for name in ("ndcg", "recall", "ap", "rr", "hit", "longtail_ndcg"):
                assert np.allclose(getattr(chunked, name), getattr(whole, name), rtol=0, atol=1e-9, equal_nan=True), name
            assert chunked.coverage == whole.coverage

    def test_one_chunk_equals_the_dense_matrices_of_ranking(self):
        history, holdout = split(world(seed=3))
        rec = model(history)
        r = ranking(rec, history, holdout)
        scores = rec.score(r.users, history).float()
        dense = ndcg_at_k(topk_hits(scores, r.relevant, r.seen, 5), r.n_relevant, 5).double().numpy()
        got = user_metrics(rec, history, holdout, k=5)
        assert np.array_equal(got.user_ids, r.users["user_id"].to_numpy()) and np.array_equal(got.ndcg, dense)

    def test_the_drift_scorer_gives_the_same_scores_in_chunks(self):
        history, window = split(world(seed=5))
        rec = model(history)
        whole = champion_scorer(rec, chunk_users=10**6)(window)
        chunked = champion_scorer(rec, chunk_users=4)(window)
        assert np.isnan(whole).any() and np.array_equal(np.isnan(whole), np.isnan(chunked))  # items 41-45: NaN
        assert np.allclose(whole, chunked, rtol=0, atol=1e-6, equal_nan=True)
