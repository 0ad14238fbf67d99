"""recsys_retrain.data.online: the online store an ingest fills holds what Feast's own materialize would write.

Real Feast (local provider, parquet offline store, SQLite online store) in a copy of features/.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.data.ingest import ingest

from tests.data.conftest import events

USERS, ITEMS = list(range(1, 16)) + [99], list(range(1, 13)) + [77]


def _batch(rng: np.random.Generator, first_day: int, days: int, n: int, users=range(1, 16), items=range(1, 13)):
    stamps = [
        (pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=first_day + int(d), minutes=int(m))).isoformat()
        for d, m in zip(rng.integers(0, days, n), rng.integers(0, 24 * 60, n))
    ]
    return events(*zip(rng.choice(list(users), n).tolist(), rng.choice(list(items), n).tolist(), stamps))


def _online(repo: Path) -> dict:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    refs = {key: [f"{fv.name}:{f.name}" for fv in store.list_feature_views() if fv.name != "recommendations"
                  for f in fv.features if fv.entity_columns[0].name == key]
            for key in ("user_id", "item_id")}
    out = {}
    for key, ids in (("user_id", USERS), ("item_id", ITEMS)):
        rows = store.get_online_features(features=refs[key], entity_rows=[{key: i} for i in ids]).to_dict()
        out[key] = {k: [list(v) if isinstance(v, (list, tuple, np.ndarray)) else v for v in vals] for k, vals in rows.items()}
    return out


def test_after_batches_late_events_and_new_ids_the_online_store_equals_feasts_materialize(feature_repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ingest(_batch(rng, 0, 6, 60), feature_repo)
    ingest(_batch(rng, 6, 5, 50), feature_repo)
    ingest(_batch(rng, 11, 5, 50), feature_repo)
    late = pd.concat([_batch(rng, 9, 1, 10), events((99, 77, "2024-03-10 12:00"))], ignore_index=True)
    ingest(late, feature_repo)  # before the state's day: recomputed from the log, a new user and a new item
    ingest(_batch(rng, 16, 4, 40), feature_repo)
    ours = _online(feature_repo)
    assert ours["user_id"]["user_n_interactions"][-1] == 1 and ours["item_id"]["item_n_interactions"][-1] == 1

    twin = tmp_path / "twin"
    shutil.copytree(feature_repo, twin)
    with sqlite3.connect(twin / "data" / "online_store.db") as db:  # empty the online tables, keep their schema
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            db.execute(f'DELETE FROM "{table}"')  # nosec B608  # the store's own table names
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(twin))
    views = [fv.name for fv in store.list_feature_views() if fv.name != "recommendations"]
    store.materialize(datetime(2024, 2, 1, tzinfo=timezone.utc), datetime(2024, 4, 1, tzinfo=timezone.utc), feature_views=views)
    assert _online(twin) == ours
