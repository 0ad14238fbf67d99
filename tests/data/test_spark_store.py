"""Feast on Spark (``feature_store.spark.yaml``): the same windows and statistics as the local path.

One Spark session for the module (``local[2]``, the yaml's settings), stopped at its end.
Skipped where PySpark (the ``spark`` extra) or a Java runtime (``make java``) is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data import features as F
from recsys_retrain.data.ingest import bootstrap_feature_repo, ingest
from recsys_retrain.data.store import offline_kind, pull_window, user_features

from tests.data.conftest import random_log, raw
from tests.data.oracle import stats_tables as oracle_stats

pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime (make java)"),
]


@pytest.fixture(scope="module")
def spark_env():
    """``RETRAIN_OFFLINE_STORE=spark`` for what runs inside; the module's Spark session stopped at the end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRAIN_OFFLINE_STORE", "spark")
        yield mp
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return random_log(400)


@pytest.fixture(scope="module")
def repos(log: pd.DataFrame, spark_env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same log bootstrapped twice: the file store's repository and the Spark store's."""
    root = tmp_path_factory.mktemp("spark")
    out = {"file": copy_feature_repo(root / "file"), "spark": copy_feature_repo(root / "spark")}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RETRAIN_OFFLINE_STORE")
        bootstrap_feature_repo(raw(log), out["file"])
    bootstrap_feature_repo(raw(log), out["spark"])
    return out


def local(fn, *args, **kwargs):
    """``fn`` with the default offline store (the file store), whatever the module's environment says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RETRAIN_OFFLINE_STORE", raising=False)
        return fn(*args, **kwargs)


class TestSparkRetrieval:
    def test_the_spark_yaml_is_picked(self, repos: dict[str, Path]) -> None:
        assert offline_kind(repos["spark"]) == "spark" and local(offline_kind, repos["file"]) == "file"

    def test_point_in_time_window_equals_the_local_path_row_for_row(self, repos: dict[str, Path]) -> None:
        fast = local(pull_window, repos["file"], "2024-03-05", "2024-04-08")
        spark = pull_window(repos["spark"], "2024-03-05", "2024-04-08")
        assert len(fast) > 300 and (fast.user_n_interactions > 0).any() and (fast.item_popularity_rank > 1).any()
        pd.testing.assert_frame_equal(spark, fast)

    def test_service_columns_and_as_of_features(self, repos: dict[str, Path]) -> None:
        v1 = pull_window(repos["spark"], "2024-03-10", "2024-03-20", service="two_tower_v1")
        assert list(v1.columns) == F.WINDOW_COLUMNS[:11]
        pd.testing.assert_frame_equal(v1, local(pull_window, repos["file"], "2024-03-10", "2024-03-20", "two_tower_v1"))
        users = [1, 2, 3, 999]  # 999: unknown, gets the defaults
        pd.testing.assert_frame_equal(user_features(repos["spark"], users, "2024-03-20"),
                                      local(user_features, repos["file"], users, "2024-03-20"))


class TestSparkStatistics:
    def test_spark_sql_statistics_equal_the_full_recomputation_and_the_stored_parts(self, log: pd.DataFrame,
                                                                                    repos: dict[str, Path]) -> None:
        from recsys_retrain.data.spark_stats import spark_session, stats_tables

        spark = spark_session(repos["spark"])
        for since in (None, pd.Timestamp("2024-03-21", tz="UTC")):
            expected = oracle_stats(log, since=since)
            got = stats_tables(spark, log.sample(frac=1.0, random_state=1), since=since)
            for name in ("user_stats", "item_stats"):
                assert len(got[name]) > 100
                pd.testing.assert_frame_equal(got[name], expected[name], check_exact=False, rtol=1e-12)
        for name in ("user_stats", "item_stats"):  # what ingest stored, day by day from its rolling state
            stored = pd.read_parquet(repos["spark"] / "data" / name).sort_values([got[name].columns[0], F.TS], kind="stable")
            pd.testing.assert_frame_equal(stored.reset_index(drop=True), stats_tables(spark, log)[name].reset_index(drop=True),
                                          check_exact=False, rtol=1e-12, check_dtype=False)

    def test_ingest_updates_the_spark_repository_like_the_file_one(self, log: pd.DataFrame, tmp_path: Path) -> None:
        late = random_log(120, seed=1)
        late = late.assign(timestamp=late.timestamp + pd.Timedelta(days=35))
        repos = {"file": copy_feature_repo(tmp_path / "file"), "spark": copy_feature_repo(tmp_path / "spark")}
        local(bootstrap_feature_repo, raw(log), repos["file"])
        local(ingest, late, repos["file"], materialize=False)
        bootstrap_feature_repo(raw(log), repos["spark"])
        assert ingest(late, repos["spark"], materialize=False).added == len(late)
        for name in ("user_stats", "item_stats", "user_history"):  # the same daily parts, appended the same way
            pd.testing.assert_frame_equal(pd.read_parquet(repos["spark"] / "data" / name),
                                          pd.read_parquet(repos["file"] / "data" / name), check_exact=False, rtol=1e-12)
        pd.testing.assert_frame_equal(pull_window(repos["spark"], "2024-04-01", "2024-05-01"),
                                      local(pull_window, repos["file"], "2024-04-01", "2024-05-01"))
