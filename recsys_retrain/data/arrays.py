"""Flat arrays kept as raw files in one folder and changed in place, crash-safe through a write-ahead journal.

The rolling state (``recsys_retrain.data.parts``) is a few arrays per entity, most of
whose rows a batch leaves alone; rewriting them whole on every batch made its cost
follow the entities. Here each array is a raw file (``<name>.<generation>.bin``,
native byte order, no header) that a commit changes only where it must:

- ``Patch``: values at positions (rows the batch touched) and a block from an offset
  (rows it added); the file grows when the block reaches past its end;
- ``Replace``: a whole new array, written to a new file name (so the old file is
  still whole until the commit names the new one);
- ``drop``: arrays no longer wanted.

``meta.json`` (written atomically) names each array's file, dtype and length, and is
the commit point: ``commit`` writes the new files, then the patches to a journal, then
the meta naming that journal; only then does it apply the patches to the files, and
finally it writes the meta again without the journal and removes what no meta names.
A process that dies before the meta is written leaves the previous arrays untouched
(the new files are orphans, removed by the next commit); one that dies after it
leaves a committed journal, which ``open`` applies again: a patch holds absolute
values at absolute positions, so applying it twice changes nothing.

Example:
    >>> import tempfile
    >>> folder = ArrayFolder(Path(tempfile.mkdtemp()))
    >>> folder.commit({"n": Replace(np.array([1, 2, 3]))}, {"day": 7})
    >>> folder.commit({"n": Patch(4, at=np.array([0]), values=np.array([5]), offset=3, block=np.array([9]))}, {"day": 8})
    >>> folder.read("n").tolist(), folder.open()["extra"]
    ([5, 2, 3, 9], {'day': 8})
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_retrain.io import write_json, write_with

META = "meta.json"
FORMAT = 2  # meta.json's "format": the arrays of this module (1, or no "format": the state's earlier files)


@dataclass(frozen=True)
class Replace:
    """A whole new array."""

    array: np.ndarray


@dataclass(frozen=True)
class Patch:
    """``length``: the array's new length; ``values`` at positions ``at``; ``block`` from ``offset`` on."""

    length: int
    at: np.ndarray | None = None
    values: np.ndarray | None = None
    offset: int = 0
    block: np.ndarray | None = None


class ArrayFolder:
    """The arrays of one folder and the meta that commits them (one writer at a time: the caller locks)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def meta(self) -> dict | None:
        """The committed meta, as written; None when the folder has none."""
        path = self.folder / META
        return json.loads(path.read_text()) if path.exists() else None

    def open(self) -> dict | None:
        """The committed meta after applying a journal a dead process left committed; None when there is none."""
        meta = self.meta()
        if meta is None or meta.get("format") != FORMAT:
            return meta
        if meta.get("journal"):
            self._apply(meta, self.folder / meta["journal"])
            meta = {**meta, "journal": None}
            write_json(meta, self.folder / META)
            self._tidy(meta)
        return meta

    def read(self, name: str, mmap: bool = False) -> np.ndarray:
        """A committed array (after ``open``): in memory, or read-only mapped (nothing read until used)."""
        spec = self.meta()["arrays"][name]
        path, dtype, length = self.folder / spec["file"], np.dtype(spec["dtype"]), int(spec["length"])
        if length == 0:
            return np.zeros(0, dtype)
        if mmap:
            return np.memmap(path, dtype=dtype, mode="r", shape=(length,))
        return np.fromfile(path, dtype=dtype, count=length)

    def commit(self, changes: dict[str, Patch | Replace], extra: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        """Apply ``changes`` (patches to arrays the folder has, new arrays) and ``extra`` as one step."""
        old = self.open() or {}
        if old.get("format") != FORMAT:
            old = {}
        generation = int(old.get("generation", 0)) + 1
        arrays = {k: v for k, v in old.get("arrays", {}).items() if k not in drop}
        journal: dict[str, np.ndarray] = {}
        for name, change in changes.items():
            if isinstance(change, Replace):
                array = np.ascontiguousarray(change.array)
                file = f"{name}.{generation}.bin"
                write_with(self.folder / file, lambda tmp, a=array: a.tofile(tmp))
                arrays[name] = {"file": file, "dtype": array.dtype.str, "length": len(array)}
                continue
            if name not in arrays:
                raise ValueError(f"{name}: no such array to patch in {self.folder}")
            dtype = np.dtype(arrays[name]["dtype"])
            arrays[name] = {**arrays[name], "length": int(change.length)}
            if change.at is not None and len(change.at):
                journal[f"{name}/at"] = np.asarray(change.at, np.int64)
                journal[f"{name}/values"] = np.asarray(change.values, dtype)
            if change.block is not None and len(change.block):
                journal[f"{name}/offset"] = np.array([change.offset], np.int64)
                journal[f"{name}/block"] = np.asarray(change.block, dtype)
        meta = {"format": FORMAT, "generation": generation, "arrays": arrays, "extra": extra, "journal": None}
        if journal:
            name = f"journal.{generation}.npz"
            write_with(self.folder / name, lambda tmp: _savez(tmp, journal))
            write_json({**meta, "journal": name}, self.folder / META)  # the commit
            self._apply(meta, self.folder / name)
        write_json(meta, self.folder / META)  # the commit, when there was no journal
        self._tidy(meta)

    def _apply(self, meta: dict, journal: Path) -> None:
        with np.load(journal) as patches:
            for name in sorted({key.split("/")[0] for key in patches.files}):
                self._patch(meta["arrays"][name], name, patches)

    def _patch(self, spec: dict, name: str, patches) -> None:
        """One array's patch, in place (the file grows to the array's length first)."""
        dtype, length = np.dtype(spec["dtype"]), int(spec["length"])
        path = self.folder / spec["file"]
        if length == 0:
            return
        with open(path, "r+b") as handle:
            if os.fstat(handle.fileno()).st_size < length * dtype.itemsize:
                handle.truncate(length * dtype.itemsize)
        target = np.memmap(path, dtype=dtype, mode="r+", shape=(length,))
        if f"{name}/block" in patches.files:
            offset = int(patches[f"{name}/offset"][0])
            block = patches[f"{name}/block"]
            target[offset : offset + len(block)] = block
        if f"{name}/at" in patches.files:
            target[patches[f"{name}/at"]] = patches[f"{name}/values"]
        del target  # no msync: like every write of the pipeline, safe from a dying process, not fsynced

    def _tidy(self, meta: dict) -> None:
        """Remove the files no meta names: replaced arrays, dropped ones, journals, orphans of a dead commit."""
        keep = {META, *(spec["file"] for spec in meta["arrays"].values())}
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in keep and (path.suffix in (".bin", ".npz") or path.name.startswith(".")):
                path.unlink(missing_ok=True)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
