"""features/feature_store.prod.yaml against real PostgreSQL (registry + offline store) and Redis.

Uses the servers at 127.0.0.1 (default ports), starting them if they are down; each
test run gets its own database and Redis db index, dropped / flushed afterwards.
Skipped, with the reason, only where a server is down and cannot be started.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.ingest import bootstrap_feature_repo, ingest

from recsys_retrain.data.store import pull_window
from recsys_retrain.data.load import RawData

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Redis db index of the prod_env fixture, one per pytest-xdist worker: each test flushes its index
# afterwards, so two workers on one index would wipe each other's online store. 9 and 10 are the
# production check's (infra/stack.py, tests/test_prod_check.py).
REDIS_DBS = (7, 8, 11, 12, 13, 14, 15)


def redis_db() -> int:
    """This worker's Redis db index (``PYTEST_XDIST_WORKER`` is ``gwN`` under pytest-xdist, unset without it)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    if worker >= len(REDIS_DBS):
        pytest.fail(f"pytest-xdist worker {worker}: only {len(REDIS_DBS)} Redis db indexes are set aside (REDIS_DBS)")
    return REDIS_DBS[worker]


PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def _pg_up() -> bool:
    import psycopg

    try:
        psycopg.connect(dbname="postgres", connect_timeout=2, **PG).close()
        return True
    except psycopg.OperationalError:
        return False


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping())
    except redis.exceptions.ConnectionError:
        return False


def _ensure(name: str, up, start: str) -> None:
    if up():
        return
    subprocess.run(start, shell=True, capture_output=True, text=True, timeout=60)
    for _ in range(20):
        if up():
            return
        time.sleep(0.5)
    pytest.skip(f"{name} at 127.0.0.1 is down and `{start}` did not start it")


@pytest.fixture
def prod_env(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("psycopg", reason="feast[postgres] extra (psycopg[binary,pool]) not installed")
    pytest.importorskip("redis", reason="feast[redis] extra (redis, hiredis) not installed")
    import psycopg
    import redis

    _ensure("PostgreSQL", _pg_up, PG_START)
    _ensure("Redis", _redis_up, REDIS_START)
    db = f"recsys_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    env = {
        # production names its MLflow server; this test only reads Feast, so nothing listens there
        "RETRAIN_DEPLOYMENT": "production", "RETRAIN_TRACKING_URI": "http://127.0.0.1:5000",
        "FEAST_PG_HOST": PG["host"], "FEAST_PG_PORT": str(PG["port"]),
        "FEAST_PG_DB": db, "FEAST_PG_USER": PG["user"], "FEAST_PG_PASSWORD": "", "FEAST_PG_SSLMODE": "disable",
        "FEAST_REDIS": f"127.0.0.1:6379,db={redis_db()}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield db
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db()).flushdb()
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _events(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.assign(timestamp=pd.to_datetime(df.timestamp, utc=True).astype("datetime64[ns, UTC]"), rating=4.0)


FIRST = [(1, 10, "2024-03-01 09:00"), (2, 10, "2024-03-01 10:00"), (1, 11, "2024-03-03 09:00")]
SECOND = [(3, 11, "2024-03-05 09:00"), (1, 10, "2024-03-06 12:00"), (2, 12, "2024-03-06 13:00")]


def test_postgres_offline_and_registry_redis_online(prod_env: str, tmp_path: Path, monkeypatch) -> None:
    from feast import FeatureStore

    users = pd.DataFrame({"user_id": [1, 2], "age": [30, 40], "gender": ["F", "M"], "occupation": ["writer", "other"]})
    items = pd.DataFrame({"item_id": [10, 11, 12], "genres": ["Drama", "Comedy", ""], "release_year": [1999, 2001, 0]})
    repo = copy_feature_repo(tmp_path / "prod")
    bootstrap_feature_repo(RawData(_events(FIRST), users, items), repo)
    result = ingest(_events(SECOND), repo)
    assert result.added == 3 and not (repo / "data" / "registry.db").exists()  # the registry is in PostgreSQL

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / "feature_store.prod.yaml")
    assert store.config.online_store.type == "redis" and store.config.offline_store.type == "postgres"
    assert {s.name for s in store.list_feature_services()} == {"two_tower_v1", "two_tower_v2", "two_tower_online_v1",
                                                               "recommendations_v1"}
    online = store.get_online_features(
        features=store.get_feature_service("two_tower_v2"), entity_rows=[{"user_id": 1, "item_id": 10}]
    ).to_dict()
    assert online["user_age"] == [30] and online["item_genres"] == ["Drama"]
    assert online["user_n_interactions"] == [3] and online["item_n_interactions"] == [3]
    from recsys_retrain.serve.online import OnlineReader, online_requests  # what a served model reads, from Redis

    served = online_requests(OnlineReader(store), [1, 2, 99])
    assert served["recent_items"].tolist() == [[10, 11, 10], [10, 12], []]  # the history through PostgreSQL arrays
    assert served["seen_items"].tolist() == [[10, 11], [10, 12], []] and served["known"].tolist() == [True, True, False]

    prod_window = pull_window(repo, "2024-03-01", "2024-03-07")  # Feast historical retrieval on PostgreSQL
    monkeypatch.setenv("RETRAIN_DEPLOYMENT", "local")
    local = copy_feature_repo(tmp_path / "local")
    bootstrap_feature_repo(RawData(_events(FIRST + SECOND), users, items), local)
    pd.testing.assert_frame_equal(prod_window, pull_window(local, "2024-03-01", "2024-03-07"))


def _tables(db: str) -> dict[str, tuple[int, int]]:
    """(oid, rows) of each offline table: a dropped and reloaded table gets a new oid."""
    import psycopg

    names = ("interactions", "user_profile", "item_profile", "user_stats", "item_stats", "user_history")
    with psycopg.connect(dbname=db, **PG) as conn:
        return {n: (conn.execute("SELECT to_regclass(%s)::oid", (n,)).fetchone()[0],
                    conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}


def test_ingest_copies_only_the_new_rows_into_postgres(prod_env: str, tmp_path: Path) -> None:
    """No table is dropped by an ingest; each holds the rows of the repository's parquet files."""
    from recsys_retrain.data.parts import read_parts
    from recsys_retrain.data.store import read_events

    repo = copy_feature_repo(tmp_path / "prod")
    bootstrap_feature_repo(RawData(_events(FIRST), pd.DataFrame(), pd.DataFrame()), repo)
    before = _tables(prod_env)
    ingest(_events(SECOND), repo, materialize=False)
    ingest(_events([(4, 13, "2024-03-06 15:00"), (1, 13, "2024-03-08 09:00")]), repo, materialize=False)
    after = _tables(prod_env)
    assert {n: oid for n, (oid, _) in before.items()} == {n: oid for n, (oid, _) in after.items()}
    data = repo / "data"
    local = {n: len(read_parts(data, n)) for n in ("user_stats", "item_stats", "user_history")}
    local |= {n: len(pd.read_parquet(data / f"{n}.parquet")) for n in ("user_profile", "item_profile")}
    local["interactions"] = len(read_events(repo))
    assert {n: rows for n, (_, rows) in after.items()} == local
    assert local["interactions"] == 8 and local["user_profile"] == 4
