"""The daily feature tables as folders of parts, and the rolling state beside them.

``user_stats``, ``item_stats`` and ``user_history`` are folders under ``<repo>/data``
with one parquet file per stamp day (``user_stats/2024-03-01.parquet``): an ingest
writes the parts of its own days (those whose rows it changes), and never rewrites the
history. Feast's file sources name the folders. ``data/state/`` holds the
``RollingState`` that the next batch continues from (``recsys_retrain.data.rolling``),
as the journaled arrays of ``recsys_retrain.data.arrays``.

Part and temporary names: a part is ``YYYY-MM-DD.parquet``; temporary files start with
a dot, which pyarrow's dataset reader (and so Feast) skips.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from recsys_retrain.data.arrays import FORMAT, ArrayFolder, Patch, Replace
from recsys_retrain.data.rolling import EPOCH, EntityState, ItemLists, RollingState
from recsys_retrain.data.validation import write_atomic
from recsys_retrain.io import write_json

PARTED = ("user_stats", "item_stats", "user_history")
STATE = "state"
WRITING = "writing.json"  # the generation of the state an ingest writes parts from, until it saves the next one
LIST_PARTS = ("start", "length", "values")  # an ItemLists as flat arrays (ItemLists.flush)
TOTALS = ("n", "rating_sum", "last_day")  # per entity, changed where a day counts it
FIXED = ("ids", "first_day")  # per entity, set once
LEGACY = ("users.parquet", "items.parquet", "user_days.parquet", "item_days.parquet",
          *(f"{n}_{p}.npy" for n in ("recent", "seen") for p in LIST_PARTS))  # the state as earlier versions wrote it


def part_path(data: Path, name: str, day: int) -> Path:
    return Path(data) / name / f"{(EPOCH + pd.Timedelta(days=day)):%Y-%m-%d}.parquet"


def part_days(data: Path, name: str) -> np.ndarray:
    """Stamp days (days since 1970) of the parts of ``name``, ascending."""
    folder = Path(data) / name
    names = sorted(p.stem for p in folder.glob("[0-9]*.parquet")) if folder.exists() else []
    if not names:
        return np.zeros(0, np.int64)
    return ((pd.to_datetime(names, utc=True) - EPOCH) // pd.Timedelta(days=1)).to_numpy(np.int64)


def write_part(data: Path, name: str, day: int, df: pd.DataFrame) -> None:
    write_atomic(df, part_path(data, name, day))


def drop_part(data: Path, name: str, day: int) -> None:
    part_path(data, name, day).unlink(missing_ok=True)


def drop_parts(data: Path, name: str, after: int) -> None:
    """Remove the parts stamped later than ``after``."""
    for day in part_days(data, name):
        if day > after:
            part_path(data, name, int(day)).unlink(missing_ok=True)


def read_parts(data: Path, name: str, days: Iterable[int] | None = None, filters=None, columns=None) -> pd.DataFrame:
    """The rows of the parts of ``days`` (all when None), with pyarrow ``filters``; empty and untyped if none."""
    import pyarrow.parquet as pq

    wanted = part_days(data, name) if days is None else np.asarray(sorted(set(days)), np.int64)
    files = [str(part_path(data, name, int(d))) for d in wanted if part_path(data, name, int(d)).exists()]
    if not files:
        return pd.DataFrame()
    return pq.ParquetDataset(files, filters=filters).read(columns=columns).to_pandas()


def stamp_range(data: Path, name: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and the last stamp of ``name``'s parts; None before the first."""
    days = part_days(data, name)
    if not len(days):
        return None
    return EPOCH + pd.Timedelta(days=int(days[0])), EPOCH + pd.Timedelta(days=int(days[-1]))


def begin_rows(data: Path, generation: int) -> bool:
    """Record that an ingest writes parts from the state of ``generation``; True when one did so before and
    died before saving its state: the parts it may have rewritten cannot then be taken as they stand."""
    path = Path(data) / STATE / WRITING
    died = path.exists() and json.loads(path.read_text()).get("generation") == generation
    write_json({"generation": generation}, path)
    return died


def save_state(data: Path, state: RollingState) -> None:
    """The state's arrays, committed at once (``recsys_retrain.data.arrays``).

    A state loaded from (or last saved to) this folder writes only what changed since:
    the rows of the entities it touched or added, the days it counted, the values appended
    to the per-user item lists; any other state, or lists due for a rewrite
    (``ItemLists.fold``), is written whole.
    """
    folder = ArrayFolder(Path(data) / STATE)
    meta = folder.open()
    fresh = meta is None or meta.get("format") != FORMAT or meta["generation"] != state.generation or not state.generation
    changes: dict[str, Patch | Replace] = {}
    for kind, e in (("users", state.users), ("items", state.items)):
        changes.update(_entity_changes(kind, e, fresh))
        changes.update({_day_name(kind, d, part): Replace(a) for d in (e.days if fresh else e.added_days)
                        if d in e.days for part, a in zip(("codes", "counts"), e.days[d])})
    for name, lists in (("recent", state.recent), ("seen", state.seen)):
        changes.update(_list_changes(name, lists, fresh))
    stored = set() if meta is None or meta.get("format") != FORMAT else set(meta["arrays"])
    drop = tuple(sorted(stored - set(changes) if fresh else {n for n in stored if _is_day(n, state)}))
    folder.commit(changes, {"next_day": None if state.next_day is None else int(state.next_day)}, drop)
    state.generation = int(folder.meta()["generation"])
    for part in (state.users, state.items, state.recent, state.seen):
        part.mark_saved()
    for name in LEGACY:
        (folder.folder / name).unlink(missing_ok=True)


def _entity_changes(kind: str, e: EntityState, fresh: bool) -> dict[str, Patch | Replace]:
    cols = {"ids": e.ids, "first_day": e.first_day, "n": e.n, "rating_sum": e.rating_sum, "last_day": e.last_day}
    if fresh:
        return {f"{kind}_{c}": Replace(a) for c, a in cols.items()}
    old = e.saved_rows
    touched = np.unique(np.concatenate([np.zeros(0, np.int64), *e.touched]))
    touched = touched[touched < old]
    out = {f"{kind}_{c}": Patch(len(e.ids), offset=old, block=cols[c][old:]) for c in FIXED}
    out.update({f"{kind}_{c}": Patch(len(e.ids), at=touched, values=cols[c][touched], offset=old, block=cols[c][old:])
                for c in TOTALS})
    return out


def _list_changes(name: str, lists: ItemLists, fresh: bool) -> dict[str, Patch | Replace]:
    if lists.fold() or fresh:
        return {f"{name}_{p}": Replace(a) for p, a in zip(LIST_PARTS, lists.flush())}
    old = lists.saved_users
    touched = np.unique(np.concatenate([np.zeros(0, np.int64), *lists.touched]))
    touched = touched[touched < old]
    out = {f"{name}_{p}": Patch(len(lists), at=touched, values=a[touched], offset=old, block=a[old:])
           for p, a in (("start", lists.start), ("length", lists.length))}
    end = len(lists.values) + len(lists.tail)
    out[f"{name}_values"] = Patch(end, offset=lists.saved_values, block=lists.tail[lists.saved_values - len(lists.values):])
    return out


DAY_ARRAY = re.compile(r"^(users|items)_day(-?\d+)_(codes|counts)$")


def _day_name(kind: str, day: int, part: str) -> str:
    return f"{kind}_day{int(day)}_{part}"


def _is_day(name: str, state: RollingState) -> bool:
    """Whether ``name`` is the array of a day the state no longer keeps."""
    match = DAY_ARRAY.match(name)
    return bool(match) and int(match.group(2)) not in getattr(state, match.group(1)).days


def load_state(data: Path) -> RollingState | None:
    """The stored state; None when there is none (a repository of an earlier version: rebuild from the log).

    A commit that a dead process left half-applied is completed first (``ArrayFolder.open``).
    The item lists' values are mapped, not read: a batch reads the lists of its own users.
    """
    folder = ArrayFolder(Path(data) / STATE)
    meta = folder.open()
    if meta is None:
        return None
    if meta.get("format") != FORMAT:
        return _load_earlier(folder.folder, meta["next_day"])
    entities = {}
    for kind in ("users", "items"):
        e = EntityState(**{c: folder.read(f"{kind}_{c}") for c in (*FIXED, *TOTALS)})
        for name in meta["arrays"]:
            match = DAY_ARRAY.match(name)
            if match and match.group(1) == kind and match.group(3) == "codes":
                day = int(match.group(2))
                e.days[day] = (folder.read(name), folder.read(_day_name(kind, day, "counts")))
        e.mark_saved()
        entities[kind] = e
    recent, seen = (ItemLists(folder.read(f"{n}_start"), folder.read(f"{n}_length"), folder.read(f"{n}_values", mmap=True))
                    for n in ("recent", "seen"))
    return RollingState(next_day=meta["extra"]["next_day"], users=entities["users"], items=entities["items"],
                        recent=recent, seen=seen, distinct=seen.length.copy(), generation=int(meta["generation"]))


def _load_earlier(folder: Path, next_day: int | None) -> RollingState:
    """The state as earlier versions wrote it: parquet totals and rings, the lists as .npy or list columns."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "users.parquet")
    if "recent" in table.column_names:  # the lists as parquet list columns
        recent, seen = _lists_of(table.column("recent")), _lists_of(table.column("seen"))
        table = table.drop_columns(["recent", "seen"])
    else:
        recent, seen = (ItemLists(*(np.load(folder / f"{n}_{part}.npy") for part in LIST_PARTS)) for n in ("recent", "seen"))
    return RollingState(
        next_day=next_day,
        users=EntityState.from_frames("user_id", table.to_pandas(), pd.read_parquet(folder / "user_days.parquet")),
        items=EntityState.from_frames("item_id", pd.read_parquet(folder / "items.parquet"),
                                      pd.read_parquet(folder / "item_days.parquet")),
        recent=recent, seen=seen, distinct=seen.length.copy(),
    )


def _lists_of(column) -> ItemLists:
    """An arrow list column (the state's lists as an earlier version stored them) as ``ItemLists``."""
    import pyarrow as pa

    lists = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], pa.large_list(pa.int64()))
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return ItemLists.from_flat(offsets - offsets[0], values[offsets[0] : offsets[-1]])


def clear(data: Path) -> None:
    """Remove every part and the state (before a rebuild from the whole log)."""
    for name in (*PARTED, STATE):
        shutil.rmtree(Path(data) / name, ignore_errors=True)
