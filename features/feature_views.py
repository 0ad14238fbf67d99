"""Feature views for the two-tower model.

Feature names carry their entity prefix (``user_age``, ``item_n_interactions``) so that
the names stay unique across views and are the column names a retrieval returns.

``ttl=timedelta(0)`` means "never expires" in Feast: a profile is valid until replaced,
and so is a user's history row (one per active day only).

Stats rows are stamped at 00:00 UTC of a day and describe the entity's activity on
the days before it, so an event sees nothing of its own day or later. Every entity
has a row for every day from its first interaction on, through the day after the last
stored event (recsys_retrain.data.features), so the row an event sees is at most a day
old: ``STATS_TTL`` says so to Feast. It changes no row any stored event or window sees,
and it bounds Feast's point-in-time join: the SQL stores (DuckDB, Spark, PostgreSQL) join
each event to the entity's rows of the day before it instead of to all its earlier rows
(on a 10^6-event year DuckDB needed over 12 GB without it, bench/offline_store.py). Only a
lookup more than a day after the newest stamp finds no stats row there (the defaults).
"""

from datetime import timedelta

from data_sources import (
    item_profile_source,
    item_stats_source,
    recommendations_source,
    user_history_source,
    user_profile_source,
    user_stats_source,
)
from entities import item, user
from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String

NO_EXPIRY = timedelta(0)
STATS_TTL = timedelta(days=1)  # a daily row is superseded by the next day's, which always exists (see above)

user_profile_fv = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="user_age", dtype=Int64, description="Age in years; 0 if unknown."),
        Field(name="user_gender", dtype=String, description="'M', 'F' or 'unknown'."),
        Field(name="user_occupation", dtype=String),
    ],
    online=True,
    source=user_profile_source,
    tags={"team": "recsys", "kind": "static"},
)

user_stats_fv = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=STATS_TTL,
    schema=[
        Field(
            name="user_n_interactions",
            dtype=Int64,
            description="Interactions of the user on days before the feature timestamp.",
        ),
        Field(name="user_interactions_7d", dtype=Int64, description="Interactions in the 7 days before."),
        Field(name="user_interactions_30d", dtype=Int64, description="Interactions in the 30 days before."),
        Field(name="user_distinct_items", dtype=Int64, description="Distinct items interacted with before."),
        Field(name="user_mean_rating", dtype=Float64, description="Mean rating given before; 0.0 if none."),
        Field(
            name="user_days_since_last",
            dtype=Int64,
            description="Days from the last day with an interaction to the feature day; -1 if none.",
        ),
    ],
    online=True,
    source=user_stats_source,
    tags={"team": "recsys", "kind": "daily_aggregate"},
)

item_profile_fv = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="item_genres", dtype=String, description="'|'-joined genre names; '' if none."),
        Field(name="item_release_year", dtype=Int64, description="0 if unknown."),
    ],
    online=True,
    source=item_profile_source,
    tags={"team": "recsys", "kind": "static"},
)

item_stats_fv = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=STATS_TTL,
    schema=[
        Field(
            name="item_n_interactions",
            dtype=Int64,
            description="Interactions with the item on days before the feature timestamp.",
        ),
        Field(name="item_interactions_7d", dtype=Int64, description="Interactions in the 7 days before."),
        Field(name="item_interactions_30d", dtype=Int64, description="Interactions in the 30 days before."),
        Field(
            name="item_popularity_rank",
            dtype=Int64,
            description="1 + items with more interactions in the 30 days before (ties share a rank).",
        ),
        Field(
            name="item_days_since_first",
            dtype=Int64,
            description="Days from the item's first interaction day to the feature day; -1 if none before.",
        ),
        Field(name="item_mean_rating", dtype=Float64, description="Mean rating received before; 0.0 if none."),
    ],
    online=True,
    source=item_stats_source,
    tags={"team": "recsys", "kind": "daily_aggregate"},
)

user_history_fv = FeatureView(
    name="user_history",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(
            name="user_recent_items",
            dtype=Array(Int64),
            description="Item ids of the user's most recent interactions (the model's history bag), oldest first.",
        ),
        Field(name="user_seen_items", dtype=Array(Int64), description="Every item id the user interacted with, sorted."),
    ],
    online=True,
    source=user_history_source,
    tags={"team": "recsys", "kind": "daily_aggregate"},
)

recommendations_fv = FeatureView(
    name="recommendations",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="rec_item_ids", dtype=Array(Int64), description="The champion's top-K item ids, best first."),
        Field(name="rec_scores", dtype=Array(Float64), description="Their scores."),
        Field(name="rec_version", dtype=Int64, description="The registered model version that ranked them."),
        Field(name="rec_source", dtype=String, description="'model', or 'recent_popularity' for a user it cannot rank."),
    ],
    online=True,
    source=recommendations_source,
    tags={"team": "recsys", "kind": "served"},
)
