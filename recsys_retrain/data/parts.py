"""The daily feature tables as folders of parts, and the rolling state beside them.

``user_stats``, ``item_stats`` and ``user_history`` are folders under ``<repo>/data``
with one parquet file per stamp day (``user_stats/2024-03-01.parquet``): an ingest
writes the parts of its own days (and rewrites the day it continues), and never
rewrites the history. Feast's file sources name the folders. ``data/state/`` holds the
``RollingState`` that the next batch continues from (``recsys_retrain.data.rolling``).

Part and temporary names: a part is ``YYYY-MM-DD.parquet``; temporary files start with
a dot, which pyarrow's dataset reader (and so Feast) skips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from recsys_retrain.data.rolling import EPOCH, EntityState, ItemLists, RollingState
from recsys_retrain.data.validation import write_atomic
from recsys_retrain.io import write_json, write_with

PARTED = ("user_stats", "item_stats", "user_history")
STATE = "state"
LIST_PARTS = ("start", "length", "values")  # an ItemLists as .npy files (ItemLists.flush)


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


def save_state(data: Path, state: RollingState) -> None:
    """The state's files, then ``meta.json`` (what a later batch checks first).

    The per-user item lists (recent and seen: about one value per distinct user-item pair
    of the history) are flat ``.npy`` arrays (``ItemLists.flush``): at 10^7 events parquet
    took a second to write them and half a second to read them back, on every batch.
    """
    folder = Path(data) / STATE
    write_atomic(state.users.to_frame("user_id"), folder / "users.parquet")
    for name, lists in (("recent", state.recent), ("seen", state.seen)):
        for part, array in zip(LIST_PARTS, lists.flush()):
            write_with(folder / f"{name}_{part}.npy", lambda tmp, a=array: _save_npy(tmp, a))
    write_atomic(state.items.to_frame("item_id"), folder / "items.parquet")
    write_atomic(state.users.ring_frame("user_id"), folder / "user_days.parquet")
    write_atomic(state.items.ring_frame("item_id"), folder / "item_days.parquet")
    write_json({"next_day": None if state.next_day is None else int(state.next_day)}, folder / "meta.json")


def load_state(data: Path) -> RollingState | None:
    """The stored state; None when there is none (a repository of an earlier version: rebuild from the log)."""
    folder = Path(data) / STATE
    if not (folder / "meta.json").exists():
        return None
    next_day = json.loads((folder / "meta.json").read_text())["next_day"]
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "users.parquet")
    if "recent" in table.column_names:  # the lists as parquet list columns (an earlier version)
        recent, seen = _lists_of(table.column("recent")), _lists_of(table.column("seen"))
        table = table.drop_columns(["recent", "seen"])
    else:
        recent, seen = (ItemLists(*(np.load(folder / f"{n}_{part}.npy") for part in LIST_PARTS)) for n in ("recent", "seen"))
    users = table.to_pandas()
    state = RollingState(
        next_day=next_day,
        users=EntityState.from_frames("user_id", users, pd.read_parquet(folder / "user_days.parquet"), next_day),
        items=EntityState.from_frames("item_id", pd.read_parquet(folder / "items.parquet"),
                                      pd.read_parquet(folder / "item_days.parquet"), next_day),
        recent=recent,
        seen=seen,
    )
    state.distinct = state.seen.length.copy()
    return state


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.int64))


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
