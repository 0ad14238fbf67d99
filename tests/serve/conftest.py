"""Shared world of the serving tests: MovieLens-100K before 1998-01-05 in a Feast repo with its online store filled,
and a two-tower Recommender over its catalogue (random towers, the real prior and blend: serving does not care
how good the weights are, only that every way of serving ranks as the evaluation does)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from tests.conftest import copy_feature_repo

from recsys_retrain.data import store
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower, item_prior

END = pd.Timestamp("1998-01-05", tz="UTC")  # a Monday: the store holds everything before it


@pytest.fixture(scope="session")
def served_repo(movielens: RawData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for the tests: one that writes (an ingest, a publication) works on a copy."""
    repo = copy_feature_repo(tmp_path_factory.mktemp("serve") / "features")
    before = movielens.interactions[movielens.interactions["timestamp"] < END]
    bootstrap_feature_repo(RawData(before, movielens.users, movielens.items), repo, materialize=True)
    return repo


def make_recommender(repo: Path, end: pd.Timestamp = END, seed: int = 0, blend: float = 0.3) -> Recommender:
    """A Recommender as training leaves one: encoder, catalogue, recent counts and prior as of ``end``."""
    torch.manual_seed(seed)
    history = store.read_events(repo, pd.Timestamp("1970-01-01", tz="UTC"), end)
    catalogue = store.item_catalogue(repo, end)
    users = store.user_features(repo, history["user_id"].unique(), end)
    encoder = FeatureEncoder.fit(users, catalogue)
    return Recommender(build_two_tower(encoder, 16), encoder, catalogue, encoder.recent_counts(history, catalogue),
                       item_prior(history, catalogue), blend=blend)


@pytest.fixture(scope="session")
def recommender(served_repo: Path) -> Recommender:
    return make_recommender(served_repo)
