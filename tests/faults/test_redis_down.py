"""Fault: the Feast online store (Redis) is down while an ingest materializes.

Production profile (``feature_store.prod.yaml``): registry and offline store on
PostgreSQL, online store on Redis. The ingest retries the materialization, then fails
in one line; the offline rows are complete, and a retry fails again while Redis is
down instead of passing with a stale online store. Once Redis is back, the next
ingest fills the online store.
"""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_retrain.data.ingest import bootstrap_feature_repo, ingest

from recsys_retrain.data.store import feature_store, read_events
from recsys_retrain.data.load import RawData
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import DataSettings
from tests.conftest import copy_feature_repo
from tests.faults.conftest import report
from tests.test_feast_prod import FIRST, SECOND, _events, prod_env, redis_db  # noqa: F401  # prod_env is a fixture

USERS = pd.DataFrame({"user_id": [1, 2, 3], "age": [30, 40, 50], "gender": ["F", "M", "F"],
                      "occupation": ["writer", "other", "artist"]})
ITEMS = pd.DataFrame({"item_id": [10, 11, 12], "genres": ["Drama", "Comedy", ""], "release_year": [1999, 2001, 0]})


def offline_rows(repo) -> tuple[int, int]:
    """Events in the repository's log and in the PostgreSQL offline table Feast reads."""
    from feast.infra.utils.postgres.connection_utils import _get_conn

    config = feature_store(repo).config.offline_store
    with _get_conn(config) as conn, conn.cursor() as cur:
        cur.execute('SELECT count(*) FROM "interactions"')
        return len(read_events(repo)), cur.fetchone()[0]


def online_interactions(repo, user_id: int) -> int | None:
    store = feature_store(repo)
    row = store.get_online_features(features=store.get_feature_service("two_tower_v2"),
                                    entity_rows=[{"user_id": user_id, "item_id": 10}]).to_dict()
    return row["user_n_interactions"][0]


@pytest.mark.slow
def test_redis_down_during_materialization_retries_then_fails_with_offline_data_intact(
    prod_env, tmp_path, monkeypatch, record_property  # noqa: F811
):
    from infra.stack import free_port

    repo = copy_feature_repo(tmp_path / "prod")
    bootstrap_feature_repo(RawData(_events(FIRST), USERS, ITEMS), repo, materialize=True)
    before = offline_rows(repo)
    settings = DataSettings(online_retries=2, online_backoff_s=0.1)
    redis_up = f"127.0.0.1:6379,db={redis_db()}"

    monkeypatch.setenv("FEAST_REDIS", redis_up.replace(":6379,", f":{free_port()},"))  # nothing listens there: Redis is down
    for attempt in ("task", "task's retry"):
        with pytest.raises(PipelineError) as err:
            ingest(_events(SECOND), repo, settings)
        message = str(err.value)
        assert "\n" not in message and "materialization failed after 2 attempts" in message, (attempt, message)
        assert offline_rows(repo) == (before[0] + len(SECOND), before[1] + len(SECOND))  # stored once, not lost

    monkeypatch.setenv("FEAST_REDIS", redis_up)  # Redis is back
    result = ingest(_events(SECOND), repo, settings)
    assert result.added == 0 and result.materialized_to is not None
    assert online_interactions(repo, 1) == 3 and online_interactions(repo, 3) == 1  # counts include the batch
    assert ingest(_events(SECOND), repo, settings).materialized_to is None  # caught up: nothing more to do

    lost = before[0] + len(SECOND) - offline_rows(repo)[0]
    report(record_property, data_lost_rows=lost, bad_promotions=0)
