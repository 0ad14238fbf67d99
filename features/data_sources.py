"""Batch sources of the feature views, written by ``recsys_retrain.data``.

Locally (default) they are parquet files under ``data/``; paths are relative and Feast
resolves them against the repository folder (``FileSource.get_uri_for_file_path``), so
a copy of this folder is self-contained. Under ``Settings.deployment = "production"``
(``RETRAIN_DEPLOYMENT=production``) the same sources are PostgreSQL tables of the same names
(``feature_store.prod.yaml``); Feast evaluates this file when it applies the definitions.
With ``Settings.offline_store = "spark"`` (``RETRAIN_OFFLINE_STORE=spark``,
``feature_store.spark.yaml``) they are Spark SQL queries over the same parquet files. Two
things differ from a plain ``SparkSource(path=...)``: Spark resolves a relative path
against its working directory, not the repository, so the paths are made absolute from
this file's folder when the definitions are applied; and Spark 4.0 cannot read the
nanosecond timestamps pandas writes, so the yaml reads them as longs
(``spark.sql.legacy.parquet.nanosAsLong``) and the query turns them into
``SPARK_TIMESTAMP``, the sources' timestamp field.

With ``Settings.offline_store = "duckdb"`` (``RETRAIN_OFFLINE_STORE=duckdb``,
``feature_store.duckdb.yaml``) they are file sources on the same parquet files, for Feast's
DuckDB store, which hands a source's path to DuckDB's ``read_parquet`` as it is, relative to
the working directory, not the repository. So the paths are made absolute here, and a folder of
daily parts is named by a glob of its files, which every DuckDB release reads (2.0 also reads a
bare folder): ``data/user_stats/*.parquet``, and for the log's hive partitions
``data/interactions/*/*.parquet``, whose ``day=`` folders become a ``day`` column no view reads.
"""

from pathlib import Path

from feast import FileSource

from recsys_retrain.settings import Settings

PROD = Settings().deployment == "production"
SPARK = Settings().offline_store == "spark"
DUCKDB = Settings().offline_store == "duckdb"
HERE = Path(__file__).resolve().parent
SPARK_TIMESTAMP = "event_time"  # event_timestamp (int64 nanoseconds when Spark reads it) as a Spark timestamp


def duckdb_path(path: str) -> str:
    """The absolute path, or glob of parquet files, that DuckDB's ``read_parquet`` reads for ``path``."""
    if path.endswith(".parquet"):
        return str(HERE / path)
    return str(HERE / path / ("*/*.parquet" if path == "data/interactions" else "*.parquet"))


def _source(table: str, path: str, description: str, kind: str):
    tags = {"team": "recsys", "kind": kind}
    if SPARK:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        query = f"SELECT *, timestamp_micros(event_timestamp DIV 1000) AS {SPARK_TIMESTAMP} FROM parquet.`{HERE / path}`"  # nosec B608  # this file's paths
        return SparkSource(
            name=f"{table}_source", query=query, timestamp_field=SPARK_TIMESTAMP, description=description, tags=tags
        )
    if PROD and not DUCKDB:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        return PostgreSQLSource(
            name=f"{table}_source", table=table, timestamp_field="event_timestamp", description=description, tags=tags
        )
    return FileSource(
        name=f"{table}_source",
        path=duckdb_path(path) if DUCKDB else path,
        timestamp_field="event_timestamp",
        description=description,
        tags=tags,
    )


interactions_source = _source(
    "interactions",
    "data/interactions",
    "Raw interaction events (user_id, item_id, rating), one parquet partition per UTC day "
    "(data/interactions/day=YYYY-MM-DD/).",
    "events",
)

user_profile_source = _source(
    "user_profile", "data/user_profile.parquet", "One row per user, stamped at the start of the log.", "static"
)

user_stats_source = _source(
    "user_stats",
    "data/user_stats",
    "One row per user and day from the user's first day: activity before that day, stamped 00:00 UTC "
    "(one parquet part per day: data/user_stats/YYYY-MM-DD.parquet).",
    "daily_aggregate",
)

item_profile_source = _source(
    "item_profile", "data/item_profile.parquet", "One row per catalogue item, stamped at the start of the log.", "static"
)

item_stats_source = _source(
    "item_stats",
    "data/item_stats",
    "One row per item and day from the item's first day: activity before that day, stamped 00:00 UTC "
    "(one parquet part per day: data/item_stats/YYYY-MM-DD.parquet).",
    "daily_aggregate",
)

user_history_source = _source(
    "user_history",
    "data/user_history",
    "One row per user and active day: the user's most recent and every seen item as of the next 00:00 UTC "
    "(one parquet part per stamp day).",
    "daily_aggregate",
)

recommendations_source = _source(
    "recommendations",
    "data/recommendations.parquet",
    "The champion's precomputed top-K per recently active user, one row per user and publication.",
    "served",
)
