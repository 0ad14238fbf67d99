"""File writes that readers never see half-done, and the one way timestamps become UTC.

Every file the pipeline writes (a window's parquet, a summary's JSON, a checkpoint, a
plot) goes to a temporary name in the same folder and is renamed over the target
once complete: ``os.replace`` is atomic on POSIX within one file system, so a reader,
or the next task after a crash, sees either the previous file or the new one, never a
torn one. A failed write removes its temporary file and leaves the previous file as it
was.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_json({"ndcg10": 0.25}, folder / "summary.json").read_text()
    '{\\n  "ndcg10": 0.25\\n}'
    >>> utc("2024-03-01")
    Timestamp('2024-03-01 00:00:00+0000', tz='UTC')
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix (``.parquet``, ``.png``), since some
    writers choose the format from it. On any error the temporary file is removed and
    the error propagates; ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "weights.bin"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_bytes(b"ok")
        >>> target.read_bytes()
        b'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Calls ``writer(tmp)`` and renames ``tmp`` onto ``path``: for writers with their own API (torch.save, savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(data: bytes, path: Path) -> Path:
    """``data`` written to ``path`` atomically; returns ``path``."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(text: str, path: Path) -> Path:
    """``text`` (UTF-8) written to ``path`` atomically; returns ``path``."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(payload: Any, path: Path, *, indent: int | None = 2) -> Path:
    """``payload`` as JSON (non-JSON values through ``str``) written to ``path`` atomically; returns ``path``."""
    return write_text(json.dumps(payload, indent=indent, default=str), path)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` (without its index) as parquet, written to ``path`` atomically; returns ``path``."""
    return write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing) for the block: one holder at a time, others wait.

    An advisory ``flock``: every process of the pipeline on this machine (or on a shared
    file system that supports it) takes it before the guarded work. The kernel drops it
    when its holder dies, so a killed task never leaves a stale lock behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def utc(value: str | datetime | pd.Timestamp) -> pd.Timestamp:
    """``value`` as a UTC timestamp: a naive one is read as UTC, an aware one converted.

    Example:
        >>> utc(pd.Timestamp("2024-03-01 02:00", tz="Europe/Berlin"))
        Timestamp('2024-03-01 01:00:00+0000', tz='UTC')
    """
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
