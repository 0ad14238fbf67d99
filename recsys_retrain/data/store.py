"""The Feast repository: its layout, and reading windows and features from it.

Layout under ``<repo>/data`` (the paths ``features/data_sources.py`` names):
``interactions/day=YYYY-MM-DD/part-0.parquet`` (the event log, one partition per UTC
day), ``{user,item}_profile.parquet`` (static attributes), ``{user,item}_stats/`` and
``user_history/`` (the daily rolling features, one part per stamp day, see
``recsys_retrain.data.parts``), ``state/`` (what the next batch continues from), ``quarantine/``.
Writing is ``recsys_retrain.data.ingest``.

Reading: with the file offline store, ``pull_window`` reads the partitions of the
window and joins the feature rows itself (an as-of join: the latest row at or before
each event, as Feast's ``get_historical_features`` does); Feast's file store takes
minutes and gigabytes for the same join on a full history, and Feast on DuckDB two to
three times this path's time (bench/offline_store.py). Any other offline store
(PostgreSQL in production, Spark with ``feature_store.spark.yaml``, DuckDB with
``feature_store.duckdb.yaml``) goes through ``get_historical_features``. They give the
same rows; ``tests/data/test_store.py``, ``tests/data/test_spark_store.py`` and
``tests/data/test_duckdb_store.py`` check that.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from recsys_retrain.data import features as F
from recsys_retrain.data.features import TS
from recsys_retrain.data.parts import part_days, read_parts
from recsys_retrain.data.rolling import day_numbers, stamp_of
from recsys_retrain.errors import DataError
from recsys_retrain.io import utc
from recsys_retrain.settings import Settings, feature_store_yaml

WINDOW_SERVICE = "two_tower_v2"  # the service a pulled window reads: every feature below (the model reads model.FEATURE_SERVICE)
PROFILES = {"user_profile": ("user_id", F.USER_PROFILE), "item_profile": ("item_id", F.ITEM_PROFILE)}
STATS = {"user_stats": "user_id", "item_stats": "item_id"}
LOG = "interactions"
PARQUET_STORES = ("file", "spark", "duckdb")  # offline stores that read the parquet files under data/ (no copy to publish)
HISTORY = "user_history"  # the served model's per-user history (data.rolling): sparse, daily stamps
JOIN_DAYS = 16  # stats parts joined at once by the file store's as-of join (bounds its memory)


def read_events(repo: Path, t0=None, t1=None, days: Iterable[str] | None = None) -> pd.DataFrame:
    """Stored events (user_id, item_id, timestamp, rating) with t0 <= timestamp < t1 or on ``days``."""
    import pyarrow.dataset as ds

    root = Path(repo) / "data" / LOG
    columns = {"user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64"}
    if not root.exists():
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    part = ds.partitioning(pa_schema(), flavor="hive")
    dataset = ds.dataset(root, format="parquet", partitioning=part, exclude_invalid_files=False)
    expr = None
    if days is not None:
        expr = ds.field("day").isin(list(days))
    if t0 is not None:
        lo, hi = utc(t0), utc(t1)
        expr = (ds.field("day") >= f"{lo:%Y-%m-%d}") & (ds.field("day") <= f"{hi:%Y-%m-%d}")
        expr = expr & (ds.field(TS) >= lo) & (ds.field(TS) < hi)
    table = dataset.to_table(columns=["user_id", "item_id", TS, "rating"], filter=expr)
    df = table.to_pandas().rename(columns={TS: "timestamp"})
    return df.astype(columns).sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def pa_schema():
    import pyarrow as pa

    return pa.schema([("day", pa.string())])


def pull_window(repo: Path, t0: datetime | str, t1: datetime | str, service: str | None = None) -> pd.DataFrame:
    """Interactions with t0 <= timestamp < t1 and the features each event could have seen.

    Columns: ``WINDOW_COLUMNS`` (every feature), or only the features of the named
    feature service (``two_tower_v1``...), in the same order.
    """
    repo = Path(repo).resolve()
    require_repo(repo, bootstrapped=True)
    columns = _service_columns(repo, service)
    events = read_events(repo, t0, t1)
    if events.empty:
        return F.typed(pd.DataFrame(columns=columns))
    out = events.rename(columns={"timestamp": TS})
    if offline_kind(repo) == "file":
        for key in ("user_id", "item_id"):
            out = _as_of_join(repo, out, key, utc(t1))
    else:
        out = feast_window(feature_store(repo), out)
    out = out.rename(columns={TS: "timestamp"}).sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    return F.typed(out.reindex(columns=columns))


def feast_window(store, events: pd.DataFrame) -> pd.DataFrame:
    """``events`` (user_id, item_id, event_timestamp, ...) with every feature of ``WINDOW_SERVICE`` as Feast's
    ``get_historical_features`` gives them on ``store``, whatever its offline store (bench/offline_store.py
    also runs it on Feast's own file store, which ``pull_window`` bypasses)."""
    for key in ("user_id", "item_id"):
        events = events.merge(feast_point_in_time(store, events[[key, TS]], key), on=[key, TS], how="left")
    return events


def item_catalogue(repo: Path, as_of: datetime | str) -> pd.DataFrame:
    """Every catalogue item with its features as of ``as_of`` (the candidates to rank)."""
    repo = Path(repo).resolve()
    require_repo(repo, bootstrapped=True)
    ids = pd.read_parquet(repo / "data" / "item_profile.parquet", columns=["item_id"])["item_id"]
    return _as_of(repo, "item_id", ids, as_of, F.ITEM_COLUMNS)


def user_features(repo: Path, user_ids: Iterable[int], as_of: datetime | str) -> pd.DataFrame:
    """Features of the given users as of ``as_of``; unknown users get the defaults."""
    repo = Path(repo).resolve()
    require_repo(repo, bootstrapped=True)
    return _as_of(repo, "user_id", pd.Series(list(user_ids), dtype="int64"), as_of, F.USER_COLUMNS)


def _as_of(repo: Path, key: str, ids: pd.Series, as_of, columns: list[str]) -> pd.DataFrame:
    ids = pd.Series(sorted(set(ids.tolist())), dtype="int64")
    if ids.empty:
        return F.typed(pd.DataFrame(columns=columns))
    rows = pd.DataFrame({key: ids, TS: utc(as_of)})
    if offline_kind(repo) == "file":
        feats = _as_of_join(repo, rows, key, utc(as_of) + pd.Timedelta(microseconds=1))
    else:
        feats = rows.merge(feast_point_in_time(feature_store(repo), rows, key), on=[key, TS], how="left")
    return F.typed(feats.drop(columns=[TS]).reindex(columns=columns))


def _as_of_join(repo: Path, rows: pd.DataFrame, key: str, until: pd.Timestamp) -> pd.DataFrame:
    """Each row gets the latest profile and stats row of its entity stamped at or before it."""
    entity = key.removesuffix("_id")
    rows = rows.astype({TS: "datetime64[ns, UTC]"}).sort_values(TS, kind="stable")
    table = pd.read_parquet(repo / "data" / f"{entity}_profile.parquet", filters=[(TS, "<", until)])
    table = table.astype({TS: "datetime64[ns, UTC]"}).sort_values(TS, kind="stable")
    rows = pd.merge_asof(rows, table, on=TS, by=key, direction="backward", allow_exact_matches=True)
    return _stats_join(repo / "data", f"{entity}_stats", rows, key, until)


def _stats_join(data: Path, name: str, rows: pd.DataFrame, key: str, until: pd.Timestamp) -> pd.DataFrame:
    """The as-of join on the daily stats parts, a few days' parts at a time.

    Every entity has a row in every part from its first day on (``recsys_retrain.data.rolling``),
    so the latest row at or before a timestamp is the entity's row in the latest part stamped
    at or before it: an equality join per part, which reads only the parts (and the entities)
    the rows need, never the whole table.
    """
    days = part_days(data, name)
    days = days[[stamp_of(int(d)) < until for d in days]] if len(days) else days
    row_days = day_numbers(rows[TS])
    at = np.searchsorted(days, row_days, side="right") - 1
    part = np.where(at >= 0, days[np.clip(at, 0, None)] if len(days) else -1, -1)
    rows = rows.assign(_part=part)
    out = [rows[part < 0]]
    wanted = np.unique(part[part >= 0])
    for lo in range(0, len(wanted), JOIN_DAYS):
        chunk = wanted[lo : lo + JOIN_DAYS]
        sel = rows[np.isin(part, chunk)]
        table = read_parts(data, name, chunk, filters=[(key, "in", sel[key].unique().tolist())])
        table = table.assign(_part=day_numbers(table[TS])).drop(columns=[TS])
        out.append(sel.merge(table, on=[key, "_part"], how="left"))
    joined = pd.concat(out, ignore_index=True) if len(out) > 1 else out[0]
    return joined.drop(columns="_part").sort_values(TS, kind="stable")


def feast_point_in_time(store, rows: pd.DataFrame, key: str, service: str = WINDOW_SERVICE) -> pd.DataFrame:
    """One entity's service features for each distinct (key, timestamp): Feast's as-of join.

    Users and items are queried apart because Feast's file store keeps one result per
    (join keys of the requested views, timestamp): in one query, two same-second events
    of a user with different items would collapse into one row (feast-dev/feast#6787).
    It also drops a row whose key has only later feature rows; callers merge back onto
    their own keys, so such rows get the defaults instead of vanishing.
    """
    prefix = key.removesuffix("_id") + "_"
    refs = [
        f"{p.name_to_use()}:{f.name}"
        for p in store.get_feature_service(service).feature_view_projections
        for f in p.features
        if f.name.startswith(prefix)
    ]
    out = store.get_historical_features(entity_df=rows.drop_duplicates(), features=refs).to_df()
    return out.assign(**{TS: pd.to_datetime(out[TS], utc=True).astype("datetime64[ns, UTC]")})  # PostgreSQL: naive UTC


def _service_columns(repo: Path, service: str | None) -> list[str]:
    if service is None:
        return F.WINDOW_COLUMNS
    names = {f.name for p in feature_store(repo).get_feature_service(service).feature_view_projections for f in p.features}
    return [c for c in F.WINDOW_COLUMNS if c in ("user_id", "item_id", "timestamp", "rating") or c in names]


def _yaml(repo: Path) -> Path:
    """The repository's configuration for the configured deployment and offline store, read when called."""
    settings = Settings()
    return feature_store_yaml(repo, settings.deployment, settings.offline_store)


def offline_kind(repo: Path) -> str:
    """The offline store's ``type`` in the repository's configuration: ``file``, ``postgres``, ``spark`` or ``duckdb``."""
    import yaml

    config = yaml.safe_load(_yaml(repo).read_text()) or {}
    offline = config.get("offline_store", "file")
    return offline.get("type", "file") if isinstance(offline, dict) else str(offline)


def require_repo(repo: Path, bootstrapped: bool = False) -> None:
    if not _yaml(repo).exists():
        raise DataError(f"{repo}: not a Feast repository (no {_yaml(repo).name})")
    if (repo / "data" / f"{LOG}.parquet").exists():
        raise DataError(f"{repo.name}: data/ was written by an older version (data/{LOG}.parquet); bootstrap it again")
    if bootstrapped and offline_kind(repo) in PARQUET_STORES:
        if not (repo / "data" / "item_profile.parquet").exists():
            raise DataError(f"{repo.name}: feature repository not bootstrapped (run bootstrap_feature_repo or ingest)")


def feature_store(repo: Path, check: bool = True):
    from feast import FeatureStore

    repo = Path(repo).resolve()
    if check:
        require_repo(repo)
    return FeatureStore(repo_path=str(repo), fs_yaml_file=_yaml(repo))

