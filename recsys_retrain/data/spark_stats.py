"""The daily statistics views (``user_stats``, ``item_stats``) of a whole log, computed by Spark SQL.

Ingest computes these rows incrementally, from a small per-entity state moved forward by
each batch (``recsys_retrain.data.rolling``), whatever the offline store; this module is the
whole-log recomputation as Spark SQL, for a backfill or a check on logs that outgrow one
process: a dense daily grid per entity from its first day to the day after the log's last
event, each row describing the days strictly before its stamp, built with ``sequence`` +
``explode``, every rolling feature a window function over it (``ROWS BETWEEN n PRECEDING
AND 1 PRECEDING``), so the work runs wherever the Spark session runs (``local[2]`` here, a
cluster with ``feature_store.spark.yaml``'s ``spark.master`` pointed at one).
``tests/data/test_spark_store.py`` checks that it gives the rows ingest stored and the
full pandas recomputation gives (``tests/data/oracle.py``); ``bench/spark_pit.py`` times it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recsys_retrain.data import features as F
from recsys_retrain.data.features import TS

EVENTS_VIEW = "recsys_stats_events"


def spark_session(repo: Path):
    """The Spark session Feast's Spark offline store uses for ``repo`` (started from its ``spark_conf``)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import get_spark_session_or_start_new_with_repoconfig

    from recsys_retrain.data.store import feature_store

    return get_spark_session_or_start_new_with_repoconfig(feature_store(repo).config.offline_store)


def stats_tables(spark, log, since: pd.Timestamp | None = None) -> dict[str, pd.DataFrame]:
    """``user_stats`` and ``item_stats`` rows stamped ``since`` (a midnight) or later; all if None.

    ``log``: every stored interaction (user_id, item_id, timestamp, rating), a pandas
    frame or a Spark DataFrame; the session's time zone must be UTC (the spark yaml sets it).
    """
    frame = spark.createDataFrame(log[["user_id", "item_id", "timestamp", "rating"]]) if isinstance(log, pd.DataFrame) else log
    frame.createOrReplaceTempView(EVENTS_VIEW)
    origin_sql = f"SELECT min(to_date(timestamp)) AS origin FROM {EVENTS_VIEW}"  # nosec B608  # a constant view name
    origin = spark.sql(origin_sql).collect()[0]["origin"]
    origin = pd.Timestamp(origin, tz="UTC")
    first = 0 if since is None else max(0, int((pd.Timestamp(since) - origin) // F.DAY))
    out = {}
    for key, entity, order in (("user_id", "user", F.USER_STATS), ("item_id", "item", F.ITEM_STATS)):
        rows = spark.sql(_query(key, entity, origin, first)).toPandas()
        stamps = origin + pd.to_timedelta(rows.pop("s").to_numpy(), unit="D")
        rows[TS] = pd.DatetimeIndex(stamps).astype("datetime64[ns, UTC]")
        rows = rows.sort_values([key, TS], kind="stable")
        out[f"{entity}_stats"] = F.typed(rows[[key, *order, TS]])
    spark.catalog.dropTempView(EVENTS_VIEW)
    return out


def _query(key: str, entity: str, origin: pd.Timestamp, first: int) -> str:
    """One entity kind's stats rows (``key``, the features, ``s``: the stamp as days from ``origin``)."""
    before = "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"
    window = "PARTITION BY k ORDER BY s"
    if entity == "user":
        extra_daily = """
            , new_pairs AS (SELECT k, d, count(*) AS pairs FROM (
                  SELECT user_id AS k, min(d) AS d FROM ev GROUP BY user_id, item_id) GROUP BY k, d)"""
        pairs_join = "LEFT JOIN new_pairs p ON g.k = p.k AND g.s = p.d"
        pairs_col = "coalesce(p.pairs, 0) AS pairs"
        features = f"""
            coalesce(sum(pairs) OVER ({window} {before}), 0) AS user_distinct_items,
            CASE WHEN last_active IS NULL THEN {F.NEVER} ELSE s - last_active END AS user_days_since_last"""
    else:
        extra_daily = pairs_join = ""
        pairs_col = "0 AS pairs"
        features = f"""
            rank() OVER (PARTITION BY s ORDER BY t30 DESC) AS item_popularity_rank,
            CASE WHEN s > first_day THEN s - first_day ELSE {F.NEVER} END AS item_days_since_first"""
    return STATS_SQL.format(
        key=key, entity=entity, origin=f"{origin:%Y-%m-%d}", first=first, events=EVENTS_VIEW, window=window,
        before=before, extra_daily=extra_daily, pairs_col=pairs_col, pairs_join=pairs_join, features=features,
    )


# One entity kind's stats rows; the placeholders are names and numbers of this module and a date, never outside text.
STATS_SQL = """        WITH ev AS (
            SELECT user_id, item_id, rating, datediff(to_date(timestamp), DATE'{origin}') AS d
            FROM {events}
        ),
        daily AS (SELECT {key} AS k, d, count(*) AS n, sum(rating) AS r FROM ev GROUP BY {key}, d),
        firsts AS (SELECT k, min(d) AS first_day FROM daily GROUP BY k),
        bounds AS (SELECT max(d) + 1 AS last_stamp FROM ev){extra_daily},
        grid AS (
            SELECT f.k, f.first_day, explode(sequence(f.first_day, b.last_stamp)) AS s FROM firsts f CROSS JOIN bounds b
        ),
        filled AS (
            SELECT g.k, g.first_day, g.s, coalesce(dl.n, 0) AS n, coalesce(dl.r, 0D) AS r, {pairs_col}
            FROM grid g LEFT JOIN daily dl ON g.k = dl.k AND g.s = dl.d {pairs_join}
        ),
        rolled AS (
            SELECT k, first_day, s, pairs,
                coalesce(sum(n) OVER ({window} {before}), 0) AS total,
                coalesce(sum(n) OVER ({window} ROWS BETWEEN 7 PRECEDING AND 1 PRECEDING), 0) AS t7,
                coalesce(sum(n) OVER ({window} ROWS BETWEEN 30 PRECEDING AND 1 PRECEDING), 0) AS t30,
                coalesce(sum(r) OVER ({window} {before}), 0D) AS rating_sum,
                max(CASE WHEN n > 0 THEN s END) OVER ({window} {before}) AS last_active
            FROM filled
        ),
        stats AS (
            SELECT k AS {key}, s,
                total AS {entity}_n_interactions, t7 AS {entity}_interactions_7d, t30 AS {entity}_interactions_30d,
                CASE WHEN total > 0 THEN rating_sum / total ELSE 0D END AS {entity}_mean_rating,{features}
            FROM rolled
        )
        SELECT * FROM stats WHERE s >= {first}
    """
