"""Feast on DuckDB (``feature_store.duckdb.yaml``): the same windows and online rows as the local path.

Both repositories take the same batches: a bootstrap, a later batch, then a late batch of events from
days already stored (their statistics are recomputed from that day on). The local path joins the
parquet files itself; the DuckDB one goes through Feast's ``get_historical_features`` and ``materialize``.
Skipped where the ``duckdb`` extra (ibis-framework with DuckDB) is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data import features as F
from recsys_retrain.data.ingest import bootstrap_feature_repo, ingest
from recsys_retrain.data.store import feature_store, item_catalogue, offline_kind, pull_window, user_features
from recsys_retrain.serve.online import offline_requests

from tests.data.conftest import random_log, raw

pytest.importorskip("ibis")
pytest.importorskip("duckdb")
pytestmark = pytest.mark.slow  # two repositories of three batches each: about 10 s

LATER = pd.Timestamp("2024-03-28", tz="UTC")  # the second batch starts here
LATE = (pd.Timestamp("2024-03-10", tz="UTC"), pd.Timestamp("2024-03-20", tz="UTC"))  # held back, ingested last


def batches(log: pd.DataFrame) -> list[pd.DataFrame]:
    """The log as a bootstrap, a later batch and a late one (every third event of ``LATE``)."""
    late = log.timestamp.between(*LATE, inclusive="left") & (log.index % 3 == 0)
    first = log[~late & (log.timestamp < LATER)]
    return [first, log[~late & (log.timestamp >= LATER)], log[late]]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same batches into two repositories: the file store's and the DuckDB store's (materialized by Feast)."""
    root = tmp_path_factory.mktemp("duckdb")
    out = {"file": copy_feature_repo(root / "file"), "duckdb": copy_feature_repo(root / "duckdb")}
    first, later, late = batches(random_log(400))
    for kind, repo in out.items():
        with on(kind):
            bootstrap_feature_repo(raw(first), repo)
            for batch in (later, late):
                assert ingest(batch, repo).added == len(batch) > 0
    return out


@contextmanager
def on(kind: str) -> Iterator[None]:
    """``RETRAIN_OFFLINE_STORE`` for the store ``kind`` (``file``: the default) inside the ``with``."""
    with pytest.MonkeyPatch.context() as mp:
        if kind == "duckdb":
            mp.setenv("RETRAIN_OFFLINE_STORE", "duckdb")
        else:
            mp.delenv("RETRAIN_OFFLINE_STORE", raising=False)
        yield


def both(repos: dict[str, Path], fn, *args, **kwargs) -> tuple:
    """``fn`` on the DuckDB repository, then on the file one, each under its own store."""
    out = []
    for kind in ("duckdb", "file"):
        with on(kind):
            out.append(fn(repos[kind], *args, **kwargs))
    return tuple(out)


class TestDuckDBRetrieval:
    def test_the_duckdb_yaml_is_picked(self, repos: dict[str, Path]) -> None:
        assert both(repos, offline_kind) == ("duckdb", "file")

    def test_windows_equal_the_local_path_row_for_row_after_a_late_batch(self, repos: dict[str, Path]) -> None:
        for t0, t1 in (("2024-03-01", "2024-04-11"), ("2024-03-12", "2024-03-19")):
            duck, fast = both(repos, pull_window, t0, t1)
            pd.testing.assert_frame_equal(duck, fast)
        assert len(fast) > 50 and (fast.user_n_interactions > 0).any() and (fast.item_popularity_rank > 1).any()
        whole = both(repos, pull_window, "2024-03-01", "2024-04-11")[0]
        assert len(whole) > 350 and not whole.isna().any().any()

    def test_service_columns_and_as_of_features(self, repos: dict[str, Path]) -> None:
        v1, fast = both(repos, pull_window, "2024-03-10", "2024-03-20", service="two_tower_v1")
        assert list(v1.columns) == F.WINDOW_COLUMNS[:11]
        pd.testing.assert_frame_equal(v1, fast)
        users = [1, 2, 3, 999]  # 999: unknown, gets the defaults
        pd.testing.assert_frame_equal(*both(repos, user_features, users, "2024-03-20"))
        pd.testing.assert_frame_equal(*both(repos, item_catalogue, "2024-03-20 12:00"))
        pd.testing.assert_frame_equal(*both(repos, offline_requests, users, pd.Timestamp("2024-03-21", tz="UTC")))


class TestDuckDBMaterialization:
    def test_the_online_store_holds_what_the_file_store_wrote(self, repos: dict[str, Path]) -> None:
        rows = [{"user_id": u, "item_id": i} for u, i in ((1, 10), (7, 20), (15, 34), (999, 99))]

        def online(repo: Path) -> dict:
            store = feature_store(repo)
            return store.get_online_features(features=store.get_feature_service("two_tower_v2"), entity_rows=rows).to_dict()

        duck, fast = both(repos, online)
        assert duck == fast and fast["user_n_interactions"][:3] != [None] * 3
