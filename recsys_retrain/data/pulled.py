"""One pull per window and store state, shared by the DAGs that read the same week.

When ingest announces a week, ``champion_monitor`` and ``drift_watch`` both pull it (the
window, the history before it, the reference weeks and the catalogue) into the same
cycle folder, and a scheduled retrain may pull it again; on MovieLens each pull took
about a second, a minute of the demo's replay. ``cycle.pull`` records what it pulled in
``pulled.json`` beside the files, keyed by the store's state and the settings the pull
reads; a later pull of the same window with the same key returns that record instead of
reading the store again. Any ingest that adds events rewrites the rolling state
(``data/state/meta.json``), so a late event changes the key and the next pull reads
afresh. Only the stores that read the repository's own parquet files in this process (the
file store and DuckDB) are keyed this way: with PostgreSQL or Spark the rows may change
without this folder's files changing, so every pull reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys_retrain.data.parts import STATE
from recsys_retrain.data.store import offline_kind
from recsys_retrain.io import write_json

RECORD = "pulled.json"
KEYED_STORES = ("file", "duckdb")  # offline stores whose rows are the files under data/, rewritten only by ingest


def pull_key(repo: Path, start: str, end: str, history_days: int, reference_days: int) -> dict[str, Any] | None:
    """What a pull's rows depend on; None where the store's state cannot be read off its files."""
    meta = Path(repo) / "data" / STATE / "meta.json"
    if offline_kind(repo) not in KEYED_STORES or not meta.exists():
        return None
    stat = meta.stat()
    return {"store": f"{stat.st_mtime_ns}-{stat.st_size}", "start": start, "end": end,
            "history_days": history_days, "reference_days": reference_days}


def earlier_pull(folder: Path, key: dict[str, Any] | None, files: list[Path]) -> dict[str, Any] | None:
    """The recorded result of a pull with the same key whose files are all still there; else None."""
    record = Path(folder) / RECORD
    if key is None or not record.exists() or not all(Path(f).exists() for f in files):
        return None
    try:
        stored = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return stored.get("result") if stored.get("key") == key else None


def remember_pull(folder: Path, key: dict[str, Any] | None, result: dict[str, Any]) -> None:
    if key is not None:
        write_json({"key": key, "result": result}, Path(folder) / RECORD)
