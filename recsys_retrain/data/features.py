"""Feature tables of the Feast repository, computed from the interaction log.

Pure functions: interactions in, the rows of the ``*_profile`` and ``*_stats`` sources out.

Stats rows are stamped at midnight UTC. The row stamped day ``s`` describes the
entity as of the start of ``s``: it counts only events of days before ``s``, so an
event never sees its own day or anything later. Every entity has one row per day
from its first event's day to the day after the log's last event (a dense daily
grid), because the trailing counts and the "days since" features change even on
days the entity is idle. Feast's point-in-time join (latest row at or before the
event) then picks the row of the event's own day.

A row depends only on events of earlier days (and, for the popularity rank, on all
items' earlier events), so the rows are computed forward, day by day, from a small
per-entity state (``recsys_retrain.data.rolling``), and a batch only adds the rows of
its own days. The ``user_history`` rows (what the served model reads of a user's past)
are sparse: one per user and active day, stamped the next midnight.
"""

from __future__ import annotations

import pandas as pd

TS = "event_timestamp"  # Feast's default entity-dataframe timestamp column
DAY = pd.Timedelta(days=1)

USER_PROFILE = ["user_age", "user_gender", "user_occupation"]
ITEM_PROFILE = ["item_genres", "item_release_year"]
USER_STATS = [
    "user_n_interactions", "user_interactions_7d", "user_interactions_30d", "user_distinct_items",
    "user_mean_rating", "user_days_since_last",
]
ITEM_STATS = [
    "item_n_interactions", "item_interactions_7d", "item_interactions_30d", "item_popularity_rank",
    "item_days_since_first", "item_mean_rating",
]
# The first columns are the ones the model and other stages have used since v1; new ones follow.
V1_USER = ["user_age", "user_gender", "user_occupation", "user_n_interactions"]
V1_ITEM = ["item_genres", "item_release_year", "item_n_interactions"]
USER_COLUMNS = ["user_id", *V1_USER, *[c for c in USER_PROFILE + USER_STATS if c not in V1_USER]]
ITEM_COLUMNS = ["item_id", *V1_ITEM, *[c for c in ITEM_PROFILE + ITEM_STATS if c not in V1_ITEM]]
WINDOW_COLUMNS = [
    "user_id", "item_id", "timestamp", "rating",
    *V1_USER, *V1_ITEM,
    *[c for c in USER_COLUMNS[1:] if c not in V1_USER], *[c for c in ITEM_COLUMNS[1:] if c not in V1_ITEM],
]
NEVER = -1  # "days since" when there is no earlier interaction
DEFAULTS: dict[str, object] = {
    "user_age": 0, "user_gender": "unknown", "user_occupation": "unknown", "item_genres": "", "item_release_year": 0,
    **{c: 0 for c in USER_STATS + ITEM_STATS},
    "user_mean_rating": 0.0, "item_mean_rating": 0.0, "user_days_since_last": NEVER, "item_days_since_first": NEVER,
    "item_popularity_rank": 0,
}
DTYPES = {
    "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
    "user_gender": "object", "user_occupation": "object", "item_genres": "object",
    **{c: "int64" for c in ["user_age", "item_release_year", *USER_STATS, *ITEM_STATS]},
    "user_mean_rating": "float64", "item_mean_rating": "float64",
}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Defaults for missing features, then the dtypes other stages rely on."""
    df = df.fillna({c: v for c, v in DEFAULTS.items() if c in df.columns})
    return df.astype({c: DTYPES[c] for c in df.columns if c in DTYPES}).reset_index(drop=True)


def profile_table(ids: pd.Series, side: pd.DataFrame, key: str, cols: list[str], start: pd.Timestamp) -> pd.DataFrame:
    """One row per id (side info where known, defaults otherwise), valid from ``start``."""
    df = pd.DataFrame({key: ids}).merge(side.drop_duplicates(key, keep="last"), on=key, how="left")
    return typed(df.reindex(columns=[key, *cols])).assign(**{TS: start})


HISTORY_COLUMNS = ["user_recent_items", "user_seen_items"]
HISTORY_CAP = 100  # most recent interactions in a user's history bag (the model pools them; recsys_retrain.model)


def empty_recommendations():
    """The ``recommendations`` source with no rows, typed (a pyarrow table): what a repository holds before the
    first publication (``recsys_retrain.serve.publish``), so that materializing every view finds the file."""
    import pyarrow as pa

    schema = pa.schema([("user_id", pa.int64()), ("rec_item_ids", pa.list_(pa.int64())),
                        ("rec_scores", pa.list_(pa.float64())), ("rec_version", pa.int64()), ("rec_source", pa.string()),
                        (TS, pa.timestamp("ns", tz="UTC"))])
    return schema.empty_table()
