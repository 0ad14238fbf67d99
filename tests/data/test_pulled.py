"""recsys_retrain.data.pulled: a window is pulled once per store state, whichever DAG asks first.

Real Feast (file offline store) in a copy of features/; ``cycle.pull`` as the DAGs call it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys_retrain import cycle
from recsys_retrain.data import pulled, store
from recsys_retrain.data.ingest import ingest
from recsys_retrain.settings import Settings

from tests.conftest import copy_feature_repo
from tests.data.conftest import events


def two_weeks() -> pd.DataFrame:
    return events(*[(u, 10 + (u * d) % 7, f"2024-03-{d:02d} {8 + u}:00") for d in range(1, 15) for u in range(1, 6)])


@pytest.fixture
def repo_settings(feature_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ingest(two_weeks(), feature_repo, materialize=False)
    reads = []
    real = store.pull_window
    monkeypatch.setattr(store, "pull_window", lambda *a, **k: reads.append(a[1:3]) or real(*a, **k))
    return Settings(home=tmp_path / "home", feature_repo=feature_repo), reads


def test_a_second_pull_of_the_same_window_and_store_reads_nothing(repo_settings):
    s, reads = repo_settings
    first = cycle.pull("2024-03-08", "2024-03-15", settings=s)
    assert len(reads) == 2  # the history and the window
    again = cycle.pull("2024-03-08", "2024-03-15", settings=s)
    assert again == first and len(reads) == 2


def test_an_ingest_in_between_or_other_settings_pull_again(repo_settings):
    s, reads = repo_settings
    first = cycle.pull("2024-03-08", "2024-03-15", settings=s)
    ingest(events((9, 11, "2024-03-10 12:00")), s.feature_repo, materialize=False)  # a late event inside the window
    late = cycle.pull("2024-03-08", "2024-03-15", settings=s)
    assert len(reads) == 4 and late["rows_window"] == first["rows_window"] + 1
    window = pd.read_parquet(Path(late["run_dir"]) / "holdout.parquet")
    assert ((window.user_id == 9) & (window.item_id == 11)).sum() == 1
    shorter = s.model_copy(update={"train": s.train.model_copy(update={"history_days": 3})})
    short = cycle.pull("2024-03-08", "2024-03-15", settings=shorter)
    assert len(reads) == 6 and short["rows_history"] < late["rows_history"]


def test_a_missing_file_pulls_again(repo_settings):
    s, reads = repo_settings
    first = cycle.pull("2024-03-08", "2024-03-15", settings=s)
    (Path(first["run_dir"]) / "catalogue.parquet").unlink()
    assert cycle.pull("2024-03-08", "2024-03-15", settings=s) == first and len(reads) == 4
    assert (Path(first["run_dir"]) / "catalogue.parquet").exists()


@pytest.mark.parametrize("engine, keyed", [("duckdb", True), ("spark", False)])
def test_only_stores_that_read_the_repositorys_files_are_keyed(engine, keyed, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    repo = copy_feature_repo(tmp_path / "features")
    ingest(two_weeks(), repo, materialize=False)  # the default store writes data/state/meta.json
    monkeypatch.setenv("RETRAIN_OFFLINE_STORE", engine)
    key = pulled.pull_key(repo, "2024-03-08", "2024-03-15", 365, 28)
    assert (key is not None) == keyed
