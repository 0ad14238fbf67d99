"""Interactions in, point-in-time feature windows out.

``load``: any source (MovieLens from the recbole wheel, a GroupLens folder, a
parquet/CSV log) normalised to one ``RawData`` shape. ``ingest`` writes the Feast
repository: ``bootstrap_feature_repo`` writes every source from scratch, ``ingest``
appends a batch (validated, de-duplicated, features recomputed from the batch's
first day, online store materialized); ``store`` reads it: ``pull_window`` reads ``[t0, t1)`` with the
user/item features as they were at each event, so training never sees the future.
``features``: how the rolling features are computed. ``validation``: pandera checks,
bad rows to quarantine.

Feast is imported inside the functions that need it, so importing this package
stays cheap for DAG files.
"""

from recsys_retrain.data.features import DEFAULTS, ITEM_COLUMNS, TS, USER_COLUMNS, WINDOW_COLUMNS
from recsys_retrain.data.load import (
    GENRES,
    RECBOLE_WHEEL,
    RawData,
    load_interactions,
    load_movielens,
    load_raw,
    read_log,
)
from recsys_retrain.data.ingest import (
    INGEST_STEPS,
    IngestResult,
    bootstrap_feature_repo,
    ingest,
    quarantined,
    split_batches,
)
from recsys_retrain.data.store import (
    FEATURE_ENV,
    FEATURE_SERVICE,
    feast_point_in_time,
    item_catalogue,
    pull_window,
    read_events,
    user_features,
)
from recsys_retrain.data.validation import check_events, validate

window = pull_window  # the name the data issue uses

__all__ = [
    "DEFAULTS", "FEATURE_ENV", "FEATURE_SERVICE", "GENRES", "INGEST_STEPS", "ITEM_COLUMNS", "RECBOLE_WHEEL", "TS",
    "USER_COLUMNS", "WINDOW_COLUMNS", "IngestResult", "RawData", "bootstrap_feature_repo", "check_events",
    "feast_point_in_time", "ingest", "item_catalogue", "load_interactions", "load_movielens", "load_raw",
    "pull_window", "quarantined", "read_events", "read_log", "split_batches", "user_features", "validate", "window",
]
