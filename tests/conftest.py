"""Shared fixtures: real MovieLens-100K (downloaded once) and throwaway Feast repos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_retrain.data.load import RawData, load_movielens
from recsys_retrain.resources import copy_definitions
from recsys_retrain.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURE_REPO = REPO_ROOT / "features"


def cache_dir() -> Path:
    """Where the recbole wheel is kept between runs: $RETRAIN_HOME/cache or .retrain/cache."""
    home = os.environ.get("RETRAIN_HOME")
    return (Path(home) if home else REPO_ROOT / ".retrain") / "cache"


def copy_feature_repo(dest: Path) -> Path:
    """Copy the Feast definitions (not generated data) so tests never write into features/."""
    return copy_definitions(FEATURE_REPO, dest)


def sandbox(root: Path) -> tuple[Path, Path]:
    """A private home under ``root`` (with the downloaded data cache) and a copy of the feature definitions."""
    import shutil

    home = root / "home"
    home.mkdir(parents=True)
    if cache_dir().exists():
        shutil.copytree(cache_dir(), home / "cache")
    return home, copy_feature_repo(root / "features")


@pytest.fixture(scope="session")
def movielens() -> RawData:
    """MovieLens-100K read from the recbole wheel (943 users, 1,682 items, 100,000 ratings)."""
    return load_movielens(cache_dir())


@pytest.fixture
def feature_repo(tmp_path: Path) -> Path:
    """An empty copy of features/ in tmp_path, ready for bootstrap_feature_repo."""
    return copy_feature_repo(tmp_path / "features")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings with a fresh MLflow store per test; the tracking URI the registry sets is undone after it."""
    import mlflow

    s = Settings(home=tmp_path / "home")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    yield s
    mlflow.set_tracking_uri(None)
