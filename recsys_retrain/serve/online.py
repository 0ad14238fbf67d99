"""Reading what a request needs from Feast's online store, and its point-in-time twin offline.

A served model reads its users through the feature service ``ONLINE_SERVICE``
(``features/feature_services.py``): the profile its user tower encodes
(``user_profile``) and the history (``user_history``: the history bag and the items
already seen). The same service read offline at a timestamp (``offline_requests``)
gives the features the online store held at that time: ``tests/serve/test_online.py``
checks that the two agree, the training/serving consistency a feature store exists for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from recsys_retrain.data import features as F
from recsys_retrain.data.features import TS
from recsys_retrain.data.store import HISTORY, feature_store, offline_kind
from recsys_retrain.serve.ranker import REQUEST_COLUMNS

ONLINE_SERVICE = "two_tower_online_v1"  # what a served two-tower model reads per request
RECOMMENDATIONS_VIEW = "recommendations"  # the precomputed top-K (recsys_retrain.serve.publish)
RECOMMENDATION_FIELDS = ("rec_item_ids", "rec_scores", "rec_version", "rec_source")


def service_refs(store, service: str = ONLINE_SERVICE) -> list[str]:
    """``view:feature`` references of a feature service, in its order."""
    return [f"{p.name_to_use()}:{f.name}" for p in store.get_feature_service(service).feature_view_projections for f in p.features]


def as_requests(frame: pd.DataFrame | dict[str, list], user_ids: Iterable[int]) -> pd.DataFrame:
    """``REQUEST_COLUMNS`` from a feature read (one row per user id, columns named after the features).

    A user is ``known`` when the store has a profile or a history for them; missing
    values get the data stage's defaults, as training's windows do. Plain lists, not
    pandas operations per column: this runs once per request.
    """
    ids = [int(u) for u in user_ids]
    read = frame if isinstance(frame, dict) else {c: frame[c].tolist() for c in frame.columns}
    by_id = {int(u): i for i, u in enumerate(read["user_id"])}
    rows = [by_id.get(u) for u in ids]

    def column(name: str) -> list:
        values = read.get(name, [])
        return [values[r] if r is not None and len(values) else None for r in rows]

    def clean(value, default):
        return default if value is None or (isinstance(value, float) and np.isnan(value)) else value

    gender, age, occupation = column("user_gender"), column("user_age"), column("user_occupation")
    recent, seen = column("user_recent_items"), column("user_seen_items")
    to_ids = lambda items: [int(i) for i in items] if items is not None and not isinstance(items, float) else []  # noqa: E731
    recent_ids = [to_ids(r) for r in recent]
    columns = {
        "user_id": np.asarray(ids, np.int64),
        "user_gender": [str(clean(g, F.DEFAULTS["user_gender"])) for g in gender],
        "user_age": np.asarray([int(clean(a, F.DEFAULTS["user_age"])) for a in age], np.int64),
        "user_occupation": [str(clean(o, F.DEFAULTS["user_occupation"])) for o in occupation],
        "recent_items": recent_ids,
        "seen_items": [to_ids(s) for s in seen],
        "known": [clean(g, None) is not None or bool(r) for g, r in zip(gender, recent_ids)],
    }
    return pd.DataFrame({c: columns[c] for c in REQUEST_COLUMNS})


class OnlineReader:
    """Reads a feature service's user views from the online store, the service resolved once.

    ``FeatureStore.get_online_features`` parses the registry's protos and type-checks its
    arguments on every call (about 8 ms of a 10 ms budget); a server reads the same
    service for every request, so this resolves its views at construction and calls
    each view's ``OnlineStore.online_read`` (the interface every Feast online store
    implements: SQLite here, Redis in production) directly. Same rows as
    ``get_online_features``; ``tests/serve/test_online.py`` checks both.
    """

    def __init__(self, store, service: str = ONLINE_SERVICE) -> None:
        self.store = store
        self.config = store.config
        self.online = store._get_provider().online_store  # noqa: SLF001  # Feast's documented OnlineStore interface
        self.views = [
            (store.get_feature_view(p.name), [f.name for f in p.features])
            for p in store.get_feature_service(service).feature_view_projections
        ]

    def read(self, user_ids: Iterable[int]) -> dict[str, list]:
        """Columns of one row per user id (input order): ``user_id`` and every feature, None where the store has none."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ids = [int(u) for u in user_ids]
        keys = [EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=u)]) for u in ids]
        columns: dict[str, list] = {"user_id": ids}
        for view, names in self.views:
            rows = self.online.online_read(self.config, view, keys, names)
            for name in names:
                columns[name] = [_value(values.get(name)) if values else None for _, values in rows]
        return columns


def _value(proto) -> Any:
    """A Feast ValueProto as a Python value (lists for the list types); None when unset."""
    if proto is None:
        return None
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    return list(value.val) if kind.endswith("_list_val") else value


def online_requests(store, user_ids: Iterable[int], service: str = ONLINE_SERVICE) -> pd.DataFrame:
    """What the online store holds now for each user, as ``Ranker.top_k`` input (input order kept).

    ``store``: a Feast ``FeatureStore`` (read with ``get_online_features``) or an
    ``OnlineReader`` (the serving path).
    """
    ids = [int(u) for u in user_ids]
    if isinstance(store, OnlineReader):
        return as_requests(store.read(ids), ids)
    read = store.get_online_features(features=service_refs(store, service), entity_rows=[{"user_id": u} for u in ids])
    return as_requests(pd.DataFrame(read.to_dict()), ids)


def offline_requests(repo: Path, user_ids: Iterable[int], at, service: str = ONLINE_SERVICE) -> pd.DataFrame:
    """The same service read point-in-time from the offline store: each user as of ``at``.

    PostgreSQL and Spark go through Feast's ``get_historical_features``. The file store
    reads the parquet sources itself, as ``pull_window`` does: ``user_history`` is one
    part per day holding only that day's active users, and Feast's file store (dask) fails
    to sort a source whose partitions the entity join leaves empty.
    """
    ids = [int(u) for u in user_ids]
    if offline_kind(repo) == "file":
        return as_requests(_file_as_of(Path(repo), ids, pd.Timestamp(at)), ids)
    store = feature_store(repo)
    rows = pd.DataFrame({"user_id": np.asarray(ids, np.int64), TS: pd.Timestamp(at)})
    out = store.get_historical_features(entity_df=rows, features=service_refs(store, service)).to_df()
    return as_requests(out.drop(columns=[TS]).drop_duplicates("user_id"), ids)


def _file_as_of(repo: Path, ids: list[int], at: pd.Timestamp) -> pd.DataFrame:
    """Each user's latest ``user_profile`` row and ``user_history`` row stamped at or before ``at``."""
    from recsys_retrain.data.parts import part_days, read_parts
    from recsys_retrain.data.rolling import stamp_of

    data = repo / "data"
    at = at.tz_convert("UTC") if at.tzinfo else at.tz_localize("UTC")
    profile = pd.read_parquet(data / "user_profile.parquet", filters=[(TS, "<=", at), ("user_id", "in", ids)])
    days = [int(d) for d in part_days(data, HISTORY) if stamp_of(int(d)) <= at]
    history = read_parts(data, HISTORY, days, filters=[("user_id", "in", ids)]) if days else pd.DataFrame()
    out = pd.DataFrame({"user_id": np.asarray(ids, np.int64)})
    for table in (profile, history):
        if len(table):
            latest = table.sort_values(TS, kind="stable").drop_duplicates("user_id", keep="last").drop(columns=[TS])
            out = out.merge(latest, on="user_id", how="left")
    return out


def read_recommendations(store, user_ids: Iterable[int]) -> pd.DataFrame:
    """The published top-K of each user: one online lookup per user (None where nothing was published)."""
    ids = [int(u) for u in user_ids]
    refs = [f"{RECOMMENDATIONS_VIEW}:{f}" for f in RECOMMENDATION_FIELDS]
    return pd.DataFrame(store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in ids]).to_dict())


def open_store(repo: Path):
    """The Feast store of ``repo`` for the configured deployment (``RETRAIN_DEPLOYMENT``)."""
    return feature_store(Path(repo))
