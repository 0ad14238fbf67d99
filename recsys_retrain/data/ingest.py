"""Writing the Feast repository: ``bootstrap_feature_repo`` (everything, from scratch)
and ``ingest`` (one batch: validate, de-duplicate, the feature rows of the batch's days
from the rolling state, append, materialize to the online store).

An ingest's cost follows the batch and the entities, not the history: it reads the
stored events of the batch's days, the state (``data/state``, what the rows of later
days need of the past) and the profiles, and writes the parts of its own days
(``recsys_retrain.data.parts``): only the stamps whose rows the batch can change, so a
batch of one day rewrites one stamp of every entity (the newest). Derived tables and
the state are written before the log partitions, each file atomically and the state
as one commit (``recsys_retrain.data.arrays``): if a run dies half-way, re-running the
same batch finds its events not yet stored and writes the same tables again (from the
whole log when the state already moved past the batch's first day), and any run after
one that died before saving its state rewrites every stamp from the state's day. One
ingest at a time per repository (a file lock).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import shutil
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd
import pyarrow.parquet as pq

from recsys_retrain.data import features as F
from recsys_retrain.data.features import TS
from recsys_retrain.data.offline_copy import Changes, publish_tables
from recsys_retrain.data.online import write_online
from recsys_retrain.data.parts import (PARTED, STATE, begin_rows, clear, drop_part, drop_parts, load_state, save_state,
                                      stamp_range, write_part)
from recsys_retrain.data.rolling import RollingState, StampRows, advance, day_numbers, stamp_of
from recsys_retrain.data.load import RawData, normalise_items, normalise_users, last_line, read_log
from recsys_retrain.data.store import HISTORY, LOG, PROFILES, STATS, offline_kind, require_repo, feature_store, read_events
from recsys_retrain.data.validation import check_events, to_parquet, write_atomic, write_quarantine
from recsys_retrain.io import file_lock, write_with
from recsys_retrain.resources import seed_feature_repo
from recsys_retrain.errors import DataError, PipelineError, ValidationError
from recsys_retrain.settings import DataSettings


FAR_FUTURE = pd.Timestamp("2200-01-01", tz="UTC")


@dataclass(frozen=True)
class IngestResult:
    """What one ``ingest`` call did; ``added == 0`` means nothing was written."""

    rows: int
    added: int
    already_stored: int
    quarantined: int
    quarantine_path: str | None
    days: int
    recomputed_from: str | None
    materialized_to: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IngestResult:
        return cls(**d)


def bootstrap_feature_repo(raw: RawData, repo: Path, materialize: bool = False) -> None:
    """Write every source under ``repo/data`` from scratch and register the definitions.

    Everything is written into a staging folder first and moved into place only after
    all of it was written, so a failure leaves the previous sources intact. Same data,
    same files. ``materialize=True`` also fills the online store (``ingest`` always does).
    A folder without Feast definitions first gets the ones shipped with the package.
    """
    repo = Path(repo).resolve()
    if raw.interactions.empty:
        raise DataError("interactions: no events to build features from")
    seed_feature_repo(repo)
    inter = raw.interactions
    origin = inter["timestamp"].min().floor("D")
    users = _side(raw.users, ["user_id", "age", "gender", "occupation"], normalise_users, "user")
    items = _side(raw.items, ["item_id", "genres", "release_year"], normalise_items, "item")
    tables = {
        "user_profile": F.profile_table(_ids(inter["user_id"], users["user_id"]), users, "user_id", F.USER_PROFILE, origin),
        "item_profile": F.profile_table(_ids(inter["item_id"], items["item_id"]), items, "item_id", F.ITEM_PROFILE, origin),
    }
    data = repo / "data"
    staging = data / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name, df in tables.items():
            to_parquet(df, _mkdir(staging) / f"{name}.parquet", f"{name}.parquet")
        state = RollingState()
        _write_rows(advance(state, inter), staging)
        save_state(staging, state)
        _write_days(_log_frame(inter), staging / LOG)
        for name in tables:
            os.replace(staging / f"{name}.parquet", data / f"{name}.parquet")
        for folder in (*PARTED, STATE, LOG):
            old = data / f".{folder}.old-{os.getpid()}"
            if (data / folder).exists():
                os.replace(data / folder, old)
            os.replace(staging / folder, data / folder)
            shutil.rmtree(old, ignore_errors=True)
        for stale in (LOG, *PARTED):  # the single-file tables of earlier versions
            (data / f"{stale}.parquet").unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    published = data / "recommendations.parquet"  # the champion's top-K, written by each publication
    if not published.exists():
        write_with(published, lambda tmp: pq.write_table(F.empty_recommendations(), tmp))
    _apply(repo)
    publish_tables(repo, Changes(since=None))
    if materialize:
        _materialize(repo, origin, tables)


def ingest(
    events: pd.DataFrame | Path | str,
    repo: Path,
    settings: DataSettings | None = None,
    *,
    materialize: bool = True,
    progress: Callable[[str], None] | None = None,
) -> IngestResult:
    """Append a batch of events, update the affected feature rows, fill the online store.

    ``events``: a dataframe or a .parquet/.csv file with user_id, item_id, timestamp
    [, rating], values as the producer wrote them. Rows failing validation go to
    ``data/quarantine/batch-<hash>.parquet`` with a reason; if their share exceeds
    ``settings.max_bad_share`` the whole batch is quarantined (nothing is ingested) and
    ValidationError says why. Events already stored (same user, item, timestamp) are
    skipped, so re-ingesting a batch changes nothing. Feature rows stamped from the
    state's day (the last stored day) on are computed and written as parts; earlier parts
    are kept as they are. Events before that day make a recomputation from the whole log.
    """
    repo = Path(repo).resolve()
    require_repo(repo)
    with file_lock(repo / "data" / ".ingest.lock"):  # one writer per repository: an overlapping retry waits
        return _ingest(events, repo, settings or DataSettings(), materialize, progress or (lambda _name: None))


def _ingest(events, repo: Path, settings: DataSettings, materialize: bool, step) -> IngestResult:
    raw = read_log(Path(events)) if isinstance(events, (str, Path)) else events
    step("validate")
    clean, bad = check_events(raw, settings, name=Path(events).name if isinstance(events, (str, Path)) else "batch")
    qpath = None
    if len(bad):  # the batch is hashed for its quarantine file's name only (it costs, at 10^7 events)
        qpath = repo / "data" / "quarantine" / f"batch-{_batch_id(raw)}.parquet"
        _quarantine_batch(raw, clean, bad, qpath, settings)
    step("deduplicate")
    days = sorted(clean["timestamp"].dt.strftime("%Y-%m-%d").unique().tolist())
    stored = read_events(repo, days=days)
    new = _anti_join(clean, stored)
    result = dict(
        rows=len(raw), added=len(new), already_stored=len(clean) - len(new), quarantined=len(bad),
        quarantine_path=str(qpath) if qpath else None, days=len(days), recomputed_from=None, materialized_to=None,
    )
    if new.empty:
        since = _online_lag(repo) if materialize else None
        if since is not None:  # an earlier attempt stored the rows but could not fill the online store
            step("materialize")
            result["materialized_to"] = _materialize_with_retries(repo, since, {}, settings, 0).isoformat()
        step("done")
        return IngestResult(**result)
    step("features")
    changes = _update_tables(repo, stored, new)
    since = changes.since
    step("append")
    _write_days(_log_frame(pd.concat([stored, new], ignore_index=True)), repo / "data" / LOG)
    if offline_kind(repo) != "file" or not (repo / "data" / "registry.db").exists() or not _registered(repo, HISTORY):
        _apply(repo)
    publish_tables(repo, changes)
    result["recomputed_from"] = since.isoformat()
    if materialize:
        step("materialize")
        result["materialized_to"] = _materialize_with_retries(repo, since, changes.profiles, settings, len(new)).isoformat()
    step("done")
    return IngestResult(**result)


INGEST_STEPS = ("validate", "deduplicate", "features", "append", "materialize", "done")


def split_batches(raw: pd.DataFrame, days: int) -> list[pd.DataFrame]:
    """Split a raw log into consecutive batches of ``days`` days each, for ``ingest`` one by one.

    Rows whose timestamp does not parse travel with the first batch (to its quarantine).
    """
    from recsys_retrain.data.validation import as_ts

    if raw.empty or days <= 0:
        return [raw]
    ts = as_ts(raw["timestamp"].reset_index(drop=True))
    start = ts.min().floor("D")
    key = ((ts - start) // pd.Timedelta(days=days)).fillna(-1).clip(lower=0).astype("int64")
    return [part for _, part in raw.reset_index(drop=True).groupby(key.to_numpy(), sort=True)]


def quarantined(repo: Path) -> pd.DataFrame:
    """Every row ingest has quarantined, values as written (text), with ``reason`` and ``batch``."""
    files = sorted((Path(repo) / "data" / "quarantine").glob("batch-*.parquet"))
    frames = [pd.read_parquet(p).assign(batch=p.stem) for p in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["reason", "batch"])


def _update_tables(repo: Path, stored: pd.DataFrame, new: pd.DataFrame) -> Changes:
    """The feature rows of the batch's days, from the stored state; the profiles of new ids.

    ``stored``: the events already stored on the batch's days. The state covers the days
    before its ``next_day`` (the last stored day): the rows stamped from then on are
    computed from it, the events stored since and the batch, and written as parts
    (the earlier parts stay as they are, and so do the stamps up to the batch's first
    day that gain no entity: their rows count no new event). A batch reaching further back, or a
    repository without a state, is recomputed from the whole log (same rows, slower).
    Returns what changed: the first stamp rewritten, the new events, the profiles' new rows.
    """
    data = repo / "data"
    state = load_state(data)
    first_new = int(day_numbers(new["timestamp"]).min())
    stored_through = None
    if state is None or state.next_day is None or first_new < state.next_day:
        pending = pd.concat([read_events(repo), new], ignore_index=True)
        state = RollingState()
        clear(data)
    else:
        later = read_events(repo, stamp_of(state.next_day), FAR_FUTURE)
        pending = pd.concat([later, new], ignore_index=True)
        # The state's writer stored the stamps through the day after its last day; the rows stamped up to the
        # batch's first day count no new event. Unless a run from this same state died after writing parts.
        if not begin_rows(data, state.generation):
            stored_through = min(first_new, state.next_day + 1)
    since = stamp_of(state.next_day if state.next_day is not None else int(day_numbers(pending["timestamp"]).min()))
    last = _write_rows(advance(state, pending, stored_through=stored_through), data)
    for name in PARTED:
        drop_parts(data, name, after=last)
    save_state(data, state)
    stored_origins = [pd.read_parquet(data / f"{n}.parquet", columns=[TS])[TS].min()
                      for n in PROFILES if (data / f"{n}.parquet").exists()]
    origin = min([pending["timestamp"].min().floor("D"), *[o for o in stored_origins if pd.notna(o)]])
    profiles, restamped = {}, False
    for name, (key, cols) in PROFILES.items():
        path = data / f"{name}.parquet"
        old = pd.read_parquet(path) if path.exists() else F.profile_table(pd.Series([], dtype="int64"), pd.DataFrame(columns=[key]), key, cols, origin)
        fresh = sorted(set(new[key].tolist()) - set(old[key].tolist()))
        if fresh or old.empty or (old[TS] != origin).any():
            added = F.profile_table(pd.Series(fresh, dtype="int64"), pd.DataFrame(columns=[key]), key, cols, origin)
            table = pd.concat([old.assign(**{TS: origin}), added], ignore_index=True).sort_values(key).reset_index(drop=True)
            write_atomic(table, path)
            profiles[name] = added
            restamped = restamped or bool((old[TS] != origin).any())
    return Changes(since=since, events=new, profiles=profiles, origin=origin if restamped else None)


def _write_rows(stamps: Iterable[StampRows], data: Path) -> int:
    """Each stamp's rows as that day's part of each table; the last stamp written."""
    last = -1
    for rows in stamps:
        write_part(data, "user_stats", rows.day, rows.user_stats)  # typed as the oracle's rows (tests/data/oracle.py)
        write_part(data, "item_stats", rows.day, rows.item_stats)
        if rows.user_history is not None and len(rows.user_history):
            write_part(data, HISTORY, rows.day, rows.user_history)
        elif rows.user_history is not None:  # nobody active the day before (a run that died may have written some)
            drop_part(data, HISTORY, rows.day)
        last = rows.day
    return last


def _materialize_with_retries(repo: Path, since: pd.Timestamp, tables: dict, settings: DataSettings, added: int):
    """``_materialize`` with backoff; then one line saying the offline rows are safe and how to finish.

    The offline tables are written before this runs, so a failure here loses nothing:
    the next ingest of any batch (the task's retry included) finds the online store
    behind the offline data and materializes the difference.
    """
    import time

    delay = settings.online_backoff_s
    for attempt in range(1, settings.online_retries + 1):
        try:
            return _materialize(repo, since, tables)
        except Exception as exc:  # Redis, PostgreSQL and Feast raise many types for an unreachable store
            if attempt == settings.online_retries:
                raise PipelineError(
                    f"online store: materialization failed after {attempt} attempts ({last_line(exc)}); "
                    f"the {added} new rows are stored offline, re-run the ingest to fill the online store"
                ) from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # nosec B101  # the loop returns or raises


def _online_lag(repo: Path) -> pd.Timestamp | None:
    """The day the online store's stats views stop, when that is before the newest offline row; else None."""
    store = feature_store(repo)
    newest = max(stamp_range(repo / "data", n)[1] for n in STATS)
    ends = [store.get_feature_view(n).most_recent_end_time for n in STATS]
    if any(e is None for e in ends):
        return min(stamp_range(repo / "data", n)[0] for n in STATS)
    reached = min(pd.Timestamp(e) if pd.Timestamp(e).tzinfo else pd.Timestamp(e, tz="UTC") for e in ends)
    return reached.floor("D") if reached <= newest else None


def _materialize(repo: Path, since: pd.Timestamp, tables: dict) -> pd.Timestamp:
    """Online store up to the newest feature row: incremental when the batch only adds days.

    Feast's ``materialize_incremental`` starts where the last run ended (or a year
    before now, with ttl 0, the first time). A batch reaching back before that (late
    events, new entities' profiles) gets an explicit ``materialize`` from its first day.
    The file store writes the latest rows itself (``recsys_retrain.data.online``).
    """
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # Feast prints progress bars
        return _materialize_quietly(repo, since, tables)


def _materialize_quietly(repo: Path, since: pd.Timestamp, tables: dict) -> pd.Timestamp:
    store = feature_store(repo)
    end = max(stamp_range(repo / "data", n)[1] for n in STATS)
    end = (end + pd.Timedelta(seconds=1)).to_pydatetime()
    stats = list(STATS)
    if offline_kind(repo) == "file":  # Feast's dask store would read every part: write the latest rows directly
        write_online(store, repo / "data", since, end, stats, HISTORY, list(PROFILES), tables)
        return pd.Timestamp(end)
    ends = [store.get_feature_view(n).most_recent_end_time for n in stats]
    if all(e is not None and pd.Timestamp(e) <= since + F.DAY for e in ends):
        store.materialize_incremental(end_date=end, feature_views=stats)
    else:
        store.materialize(since.to_pydatetime(), end, feature_views=stats)
    # The history is sparse (a row per active day, not a dense grid): the first time, from its first row, so
    # that users idle since then are in the online store too; afterwards from the batch's first day.
    history_from = since if store.get_feature_view(HISTORY).most_recent_end_time is not None else None
    if history_from is None:
        history_from = stamp_range(repo / "data", HISTORY)[0]
    store.materialize(pd.Timestamp(history_from).to_pydatetime(), end, feature_views=[HISTORY])
    profiles = [n for n in PROFILES if n in tables or store.get_feature_view(n).most_recent_end_time is None]
    if profiles:
        origin = min(pd.read_parquet(repo / "data" / f"{n}.parquet", columns=[TS])[TS].min() for n in profiles)
        store.materialize(origin.to_pydatetime(), end, feature_views=profiles)
    return pd.Timestamp(end)


def _registered(repo: Path, view: str) -> bool:
    """Whether the repository's registry has ``view`` (a repository written by an earlier version may not)."""
    from feast.errors import FeatureViewNotFoundException

    try:
        feature_store(repo).get_feature_view(view)
    except FeatureViewNotFoundException:
        return False
    return True


def _quarantine_batch(raw, clean, bad, qpath: Path, settings: DataSettings) -> None:
    share = len(bad) / max(len(raw), 1)
    if share <= settings.max_bad_share:
        write_quarantine(bad, qpath)
        return
    examples = "; ".join(f"row {i}: {r}" for i, r in bad["reason"].head(3).items())
    message = (
        f"batch: {len(bad)} of {len(raw)} rows bad ({share:.1%} > max_bad_share {settings.max_bad_share:.1%}), "
        f"e.g. {examples}; nothing ingested, the whole batch is quarantined to {qpath}"
    )
    rest = raw.reset_index(drop=True).drop(index=bad.index).assign(reason="batch rejected: too many bad rows")
    write_quarantine(pd.concat([bad, rest]).sort_index(), qpath)
    raise ValidationError(message)


def _batch_id(raw: pd.DataFrame) -> str:
    digest = pd.util.hash_pandas_object(raw.astype(str), index=False).to_numpy().tobytes()
    return hashlib.sha1(digest, usedforsecurity=False).hexdigest()[:16]  # a file name, not a secret


def _anti_join(batch: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    keys = ["user_id", "item_id", "timestamp"]
    merged = batch.merge(stored[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)


def _log_frame(inter: pd.DataFrame) -> pd.DataFrame:
    events = inter[["user_id", "item_id", "timestamp", "rating"]].rename(columns={"timestamp": TS})
    return events.sort_values([TS, "user_id", "item_id"], kind="stable").reset_index(drop=True)


def _write_days(events: pd.DataFrame, root: Path) -> None:
    """One parquet file per UTC day, each written atomically."""
    for day, part in events.groupby(events[TS].dt.strftime("%Y-%m-%d"), sort=True):
        frame = part.reset_index(drop=True)
        write_with(root / f"day={day}" / "part-0.parquet", lambda tmp: to_parquet(frame, tmp, f"{LOG}/day={day}"))


def _side(df: pd.DataFrame, columns: list[str], normalise, what: str) -> pd.DataFrame:
    """A generic log has no side tables; callers may pass them empty and without columns."""
    df = normalise(pd.DataFrame(columns=columns), "side table") if df.empty else df
    return df.rename(columns={c: f"{what}_{c}" for c in columns[1:]})


def _ids(*columns: pd.Series) -> pd.Series:
    return pd.Series(sorted(set().union(*(set(c.tolist()) for c in columns))), dtype="int64")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _apply(repo: Path) -> None:
    """Register the repo's Feast objects, as ``feast apply`` would (without deleting)."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    kinds = (Entity, DataSource, FeatureView, FeatureService)
    with _definitions(repo) as modules:
        objects = {(type(o).__name__, o.name): o for m in modules for o in vars(m).values() if isinstance(o, kinds)}
    feature_store(repo, check=False).apply(list(objects.values()))


@contextmanager
def _definitions(repo: Path) -> Iterator[list]:
    """Import the repo's definition files the way ``feast apply`` does (repo on sys.path).

    The plain module names (``entities``, ``feature_views``...) are removed again
    afterwards, so that another copy of the repository imports its own files.
    """
    names = sorted(p.stem for p in repo.glob("*.py") if p.name != "__init__.py")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(repo))
    try:
        yield [importlib.import_module(n) for n in names]
    except Exception as exc:
        raise DataError(f"{repo.name}: feature definitions do not import ({last_line(exc)})") from None
    finally:
        sys.path.remove(str(repo))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
