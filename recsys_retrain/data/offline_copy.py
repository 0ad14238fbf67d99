"""Production: the offline tables in PostgreSQL follow the repository's parquet files, batch by batch.

The parquet files under ``data/`` stay the source of truth that ``ingest`` updates; a
PostgreSQL offline store (``feature_store.prod.yaml``) receives what changed, which
Feast's historical retrieval and materialization then read. A bootstrap loads every
table from scratch; an ingest bulk-loads (``COPY ... FORMAT csv``) only its new rows:
the new events, the feature rows of the stamps it rewrote (after deleting the stored
rows of those stamps) and the profiles of new ids. Nothing is dropped and reloaded.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.data.features import TS
from recsys_retrain.data.parts import PARTED, part_days, read_parts
from recsys_retrain.data.rolling import day_numbers
from recsys_retrain.data.store import LOG, PROFILES, feature_store, offline_kind, read_events

CHUNK_ROWS = 200_000  # rows per COPY chunk: bounds the CSV text held at once


@dataclass(frozen=True)
class Changes:
    """What one write changed: ``since`` None means everything (a bootstrap)."""

    since: pd.Timestamp | None
    events: pd.DataFrame | None = None  # the new events (user_id, item_id, timestamp, rating)
    profiles: dict[str, pd.DataFrame] = field(default_factory=dict)  # per profile table: its new rows
    origin: pd.Timestamp | None = None  # set when every profile row was restamped to a new origin


def publish_tables(repo: Path, changes: Changes) -> None:
    """Copy what changed into the PostgreSQL offline store; nothing for any other store."""
    if offline_kind(repo) != "postgres":
        return
    from feast.infra.utils.postgres.connection_utils import _get_conn

    data = Path(repo) / "data"
    with _get_conn(feature_store(repo).config.offline_store) as conn, conn.cursor() as cur:
        if changes.since is None:
            for name in PROFILES:
                _replace(cur, name, pd.read_parquet(data / f"{name}.parquet"))
            for name in PARTED:
                _replace(cur, name, None)
                for day in part_days(data, name):
                    _copy(cur, name, read_parts(data, name, [day]))
            _replace(cur, LOG, read_events(repo).rename(columns={"timestamp": TS}))
            return
        for name, rows in changes.profiles.items():
            if not _exists(cur, name):
                _replace(cur, name, pd.read_parquet(data / f"{name}.parquet"))
                continue
            if changes.origin is not None:
                cur.execute(f'UPDATE "{name}" SET "{TS}" = %s', (changes.origin.to_pydatetime(),))  # nosec B608  # table names are the package's constants (PROFILES, PARTED, LOG), never input
            _copy(cur, name, rows)
        first = int(day_numbers(pd.Series([changes.since]))[0])
        for name in PARTED:
            days = [d for d in part_days(data, name) if d >= first]
            if not _exists(cur, name):
                _replace(cur, name, None)
            else:
                cur.execute(f'DELETE FROM "{name}" WHERE "{TS}" >= %s', (changes.since.to_pydatetime(),))  # nosec B608  # table names are the package's constants, never input
            for day in days:
                _copy(cur, name, read_parts(data, name, [day]))
        events = changes.events.rename(columns={"timestamp": TS})[["user_id", "item_id", TS, "rating"]]
        _copy(cur, LOG, events)


def _exists(cur, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s)", (f'"{name}"',))
    return cur.fetchone()[0] is not None


def _replace(cur, name: str, df: pd.DataFrame | None) -> None:
    """Drop ``name`` and load ``df`` into a new table (created by the first copy when ``df`` is None)."""
    cur.execute(f'DROP TABLE IF EXISTS "{name}"')
    if df is not None:
        _create(cur, name, df)
        _copy(cur, name, df)


def _create(cur, name: str, df: pd.DataFrame) -> None:
    from feast.infra.utils.postgres.connection_utils import _df_to_create_table_sql

    cur.execute(_df_to_create_table_sql(df, name))
    cur.execute(f'CREATE INDEX ON "{name}" ("{TS}")')


def _copy(cur, name: str, df: pd.DataFrame) -> None:
    """``df``'s rows appended with COPY (CSV), in chunks; creates the table from ``df`` if it is missing."""
    if df.empty:
        return
    if not _exists(cur, name):
        _create(cur, name, df)
    columns = ", ".join(f'"{c}"' for c in df.columns)
    lists = [c for c in df.columns if df[c].dtype == object and len(df) and hasattr(df[c].iloc[0], "__len__")
             and not isinstance(df[c].iloc[0], str)]
    with cur.copy(f'COPY "{name}" ({columns}) FROM STDIN (FORMAT csv)') as copy:
        for lo in range(0, len(df), CHUNK_ROWS):
            part = df.iloc[lo : lo + CHUNK_ROWS]
            part = part.assign(**{c: part[c].map(_array_literal) for c in lists})  # parquet lists -> PostgreSQL arrays
            text = io.StringIO()
            part.to_csv(text, index=False, header=False, quoting=csv.QUOTE_NONNUMERIC)  # "" stays '', not NULL
            copy.write(text.getvalue())


def _array_literal(values) -> str:
    return "{" + ",".join(str(int(v)) for v in np.asarray(values)) + "}"
