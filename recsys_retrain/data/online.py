"""Filling the online store from the rows an ingest wrote, for the embedded file store.

Feast's ``materialize`` on the file offline store reads a view's whole source with dask
and filters it by time afterwards. With the daily parts (``recsys_retrain.data.parts``)
that is every part ever written, so its cost grew with the history: 9.8 s for one
week's batch after four months of MovieLens, most of a demo week's ingest.

The rows it would write are known without that read: each entity's latest row stamped
before the end. For the stats views every entity has a row in every part from its first
day on (``recsys_retrain.data.rolling``), so they are the newest part; for the sparse
history they are each user's latest row in the parts since ``since``; for a profile,
the rows of the ids it gained (the whole table the first time). ``write_online`` writes
those with ``FeatureStore.write_to_online_store`` and records the interval in the
registry as ``materialize`` does, so ``most_recent_end_time`` and the next incremental
run agree. PostgreSQL and Spark keep Feast's ``materialize``: their engines filter
before they read.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from recsys_retrain.data.features import TS
from recsys_retrain.data.parts import part_days, read_parts
from recsys_retrain.data.rolling import day_numbers


def write_online(store, data: Path, since: pd.Timestamp, end: datetime, stats: list[str], history: str,
                 profiles: list[str], new_profiles: dict[str, pd.DataFrame]) -> None:
    """Write each view's latest rows stamped before ``end`` to the online store.

    Args:
        store: the repository's ``FeatureStore``.
        data: the repository's ``data`` folder.
        since: the first stamp the ingest wrote or rewrote.
        end: the exclusive end (just after the newest part's stamp).
        stats: the dense daily views (a row per entity per day).
        history: the sparse daily view (a row per active user and day).
        profiles: the profile views (a row per entity).
        new_profiles: profile view name -> the rows of the ids the batch added.
    """
    start = pd.Timestamp(since).to_pydatetime()
    for name in stats:
        days = part_days(data, name)
        _write(store, name, read_parts(data, name, days[-1:]), start, end)
    materialized = store.get_feature_view(history).most_recent_end_time is not None
    days = part_days(data, history)
    if materialized:
        days = days[days >= int(day_numbers(pd.Series([pd.Timestamp(since)]))[0])]
    rows = read_parts(data, history, days)
    if len(rows):
        rows = rows.sort_values(TS, kind="stable").drop_duplicates("user_id", keep="last")
    _write(store, history, rows, start, end)
    for name in profiles:
        if store.get_feature_view(name).most_recent_end_time is None:
            rows = pd.read_parquet(Path(data) / f"{name}.parquet")
        elif name in new_profiles:
            rows = new_profiles[name]
        else:
            continue
        _write(store, name, rows, start, end)


def _write(store, name: str, rows: pd.DataFrame, start: datetime, end: datetime) -> None:
    if len(rows):
        store.write_to_online_store(name, df=rows.reset_index(drop=True))
    store.registry.apply_materialization(store.get_feature_view(name), store.project, start, end)
