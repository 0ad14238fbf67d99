"""Parquet sources written by ``pipeline.data.bootstrap_feature_repo``.

Paths are relative: Feast resolves them against the repository folder
(``FileSource.get_uri_for_file_path``), so a copy of this folder is self-contained.
"""

from feast import FileSource

interactions_source = FileSource(
    name="interactions_source",
    path="data/interactions.parquet",
    timestamp_field="event_timestamp",
    description="Raw interaction events: user_id, item_id, rating.",
    tags={"team": "recsys", "kind": "events"},
)

user_profile_source = FileSource(
    name="user_profile_source",
    path="data/user_profile.parquet",
    timestamp_field="event_timestamp",
    description="One row per user, stamped at the start of the log.",
    tags={"team": "recsys", "kind": "static"},
)

user_stats_source = FileSource(
    name="user_stats_source",
    path="data/user_stats.parquet",
    timestamp_field="event_timestamp",
    description="Cumulative daily counts; the count through day d is stamped d+1 00:00 UTC.",
    tags={"team": "recsys", "kind": "daily_aggregate"},
)

item_profile_source = FileSource(
    name="item_profile_source",
    path="data/item_profile.parquet",
    timestamp_field="event_timestamp",
    description="One row per catalogue item, stamped at the start of the log.",
    tags={"team": "recsys", "kind": "static"},
)

item_stats_source = FileSource(
    name="item_stats_source",
    path="data/item_stats.parquet",
    timestamp_field="event_timestamp",
    description="Cumulative daily counts; the count through day d is stamped d+1 00:00 UTC.",
    tags={"team": "recsys", "kind": "daily_aggregate"},
)
