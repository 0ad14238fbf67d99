"""Precomputed recommendations: the champion's top-K of every recently active user, in the online store.

After a promotion (the retrain DAGs' ``publish`` task) and after a revert (the
monitor's), :func:`publish_champion` ranks every user active in the last
``serve.publish_active_days`` days of stored events, plus every user of the previous
publication (so no user keeps a list from a version that no longer serves), and writes
one row per user to the ``recommendations`` feature view with Feast's
``write_to_online_store``: an application then reads a user's list with one key lookup
in the online store (SQLite here, Redis in production). The users' features come from
the online store, as a request's do, so a published list equals what the REST endpoint
answers for that user at that time. ``data/recommendations.parquet`` keeps the
published lists (which version, for whom). Run again for the same champion (the monitor
DAG does, weekly), it refreshes the lists of the recently active users: their history has
moved, and users new since the last publication get their first list.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_retrain.data.features import TS
from recsys_retrain.data.store import HISTORY, LOG, feature_store, read_events
from recsys_retrain.errors import PipelineError
from recsys_retrain.data.validation import write_atomic
from recsys_retrain.serve.online import RECOMMENDATIONS_VIEW, OnlineReader, online_requests
from recsys_retrain.serve.ranker import Ranker
from recsys_retrain.settings import Settings

PUBLISHED = "recommendations.parquet"  # under the feature repository's data/


@dataclass(frozen=True)
class Publication:
    """What one publish did: the version whose lists serve, for how many users, and why."""

    version: int | None
    users: int
    written: bool
    seconds: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def published(repo: Path) -> pd.DataFrame | None:
    """The latest publication (``user_id``, ``rec_version``...), or None before the first."""
    path = Path(repo) / "data" / PUBLISHED
    return pd.read_parquet(path) if path.exists() else None


def recommendation_rows(ranker: Ranker, users: pd.DataFrame, version: int, k: int, exclude_seen: bool) -> pd.DataFrame:
    """The ``recommendations`` view's rows for ``users`` (``REQUEST_COLUMNS``), stamped now."""
    frame = ranker.top_k(users, k=k, exclude_seen=exclude_seen).frame
    return pd.DataFrame({
        "user_id": frame["user_id"].astype("int64"),
        "rec_item_ids": frame["item_ids"],
        "rec_scores": frame["scores"],
        "rec_version": int(version),
        "rec_source": frame["source"],
        TS: pd.Timestamp.now(tz="UTC"),  # an online store keeps the newest row: a republication must be newer
    })


def publish_champion(settings: Settings) -> Publication:
    """Publishes the champion's top-K (``serve.k``, ``serve.exclude_seen``) for the users who need a list.

    A new champion (a promotion or a revert): every recently active user and every user
    of the previous publication, so no list of another version remains. The same
    champion (the weekly run after the monitor): the recently active users only, whose
    history moved since their list was ranked, and who may have no list yet.
    """
    from recsys_retrain.registry import candidates

    start = time.perf_counter()
    repo = Path(settings.feature_repo).resolve()
    current = candidates.champion(settings)
    if current is None:
        return Publication(None, 0, False, 0.0, "no champion yet: nothing to publish")
    before = published(repo)
    old_version = int(before["rec_version"].iloc[0]) if before is not None and len(before) else None
    refresh = old_version == current.version
    users = active_users(repo, settings.serve.publish_active_days)
    if before is not None and not refresh:
        users = sorted(set(users) | set(before["user_id"].tolist()))
    if not users:
        return Publication(current.version, 0, False, 0.0, "no active user to publish for")
    store = feature_store(repo)
    if store.get_feature_view(HISTORY).most_recent_end_time is None:
        raise PipelineError(f"{repo.name}: the online store holds no user features (nothing was materialized): "
                            "ingest a batch first (retrain ingest), then publish")
    model = candidates.load_model(settings, current.version)
    rows = rank_in_chunks(Ranker(model), OnlineReader(store), users, current.version, settings)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        store.write_to_online_store(RECOMMENDATIONS_VIEW, rows)
    kept = before[~before["user_id"].isin(rows["user_id"])] if refresh else None
    write_atomic(pd.concat([kept, rows], ignore_index=True) if kept is not None and len(kept) else rows,
                 repo / "data" / PUBLISHED)
    seconds = round(time.perf_counter() - start, 3)
    if refresh:
        reason = f"refreshed v{current.version}'s top-{settings.serve.k} for {len(rows)} recently active users"
    else:
        was = f", replacing v{old_version}'s" if old_version is not None else ""
        reason = f"published v{current.version}'s top-{settings.serve.k} for {len(rows)} users{was}"
    return Publication(current.version, len(rows), True, seconds, reason)


def rank_in_chunks(ranker: Ranker, store, users: list[int], version: int, settings: Settings, chunk: int = 2048) -> pd.DataFrame:
    """``recommendation_rows`` for ``users``, reading their features from the online store a chunk at a time."""
    parts = [
        recommendation_rows(ranker, online_requests(store, users[i : i + chunk]), version, settings.serve.k,
                            settings.serve.exclude_seen)
        for i in range(0, len(users), chunk)
    ]
    return pd.concat(parts, ignore_index=True)


def active_users(repo: Path, days: int) -> list[int]:
    """Users with an event in the ``days`` days before the newest stored event (only those days are read)."""
    stored = sorted(p.name.removeprefix("day=") for p in (Path(repo) / "data" / LOG).glob("day=*"))
    if not stored:
        return []
    newest = pd.Timestamp(stored[-1], tz="UTC")
    events = read_events(repo, days=[d for d in stored if pd.Timestamp(d, tz="UTC") > newest - pd.Timedelta(days=days + 1)])
    recent = events[events["timestamp"] > events["timestamp"].max() - pd.Timedelta(days=days)]
    return sorted(int(u) for u in recent["user_id"].unique())
