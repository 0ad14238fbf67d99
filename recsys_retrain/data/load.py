"""Loading: any source (MovieLens from the recbole wheel, a GroupLens folder, a
parquet/CSV log) normalised to one ``RawData`` shape."""

from __future__ import annotations

import csv
import io
import os
import subprocess  # nosec B404  # runs this interpreter's pip with an argument list, no shell
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from recsys_retrain.errors import DataError

RECBOLE_WHEEL = "recbole==1.2.1"
_WHEEL_FILE = "recbole-1.2.1-py3-none-any.whl"
_WHEEL_DIR = "recbole/dataset_example/ml-100k/ml-100k"
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()


@dataclass(frozen=True)
class RawData:
    """Normalised interactions plus whatever user/item side information the source has.

    interactions: user_id, item_id (int64), timestamp (UTC), rating (float64, no NaN).
    users: user_id, age, gender, occupation. items: item_id, genres ("|"-joined), release_year.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame


# --------------------------------------------------------------------------- loading


def load_raw(cache_dir: Path, source: Path | None = None) -> RawData:
    """Load what ``Settings.data.source`` names: None (MovieLens), a folder, or a log file."""
    if source is None or Path(source).is_dir():
        return load_movielens(cache_dir, source)
    return RawData(load_interactions(Path(source)), pd.DataFrame(), pd.DataFrame())


def load_movielens(cache_dir: Path, path: Path | None = None) -> RawData:
    """MovieLens-100K from the recbole wheel (path None) or a GroupLens ``ml-100k`` folder."""
    if path is None:
        return _from_wheel(_fetch_wheel(Path(cache_dir)))
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder with u.data, u.item and u.user")
    return _from_grouplens(path)


def load_interactions(path: Path) -> pd.DataFrame:
    """Read an interaction log (.parquet or .csv) with user_id, item_id, timestamp[, rating]."""
    return _normalise_interactions(read_log(path), Path(path).name)


def read_log(path: Path) -> pd.DataFrame:
    """The raw rows of a .parquet or .csv log, values as written (no coercion)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path.name}: file not found ({path})")
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"{path.name}: unknown extension {path.suffix!r}, expected .parquet or .csv")
    try:
        df = readers[path.suffix.lower()](path)
    except Exception as exc:  # pyarrow and the csv parser raise many types
        raise DataError(f"{path.name}: unreadable ({last_line(exc)})") from None
    return df


def _fetch_wheel(cache_dir: Path) -> Path:
    """Download the recbole wheel once; we read its bundled data, never install it."""
    wheel = cache_dir / _WHEEL_FILE
    if wheel.exists():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Into a private folder, then one rename: a second process (a parallel test worker, a demo
    # beside a benchmark) never reads a half-written wheel, and two downloads end in one file.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
        cmd += [RECBOLE_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)  # nosec B603  # fixed args: pip download of a pinned wheel
        fetched = Path(tmp) / _WHEEL_FILE
        if proc.returncode != 0 or not fetched.exists():
            raise DataError(f"{RECBOLE_WHEEL}: pip download failed ({last_line(proc.stderr or 'no wheel')})")
        os.replace(fetched, wheel)
    return wheel


def _from_wheel(wheel: Path) -> RawData:
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter, items, users = (_read_atomic_file(zf, ext) for ext in ("inter", "item", "user"))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{wheel.name}: unreadable MovieLens data ({last_line(exc)})") from None
    items["genres"] = items["class"].fillna("").map(lambda s: _genres(s.split()))
    return RawData(
        _normalise_interactions(inter, "ml-100k.inter"),
        normalise_users(users, "ml-100k.user"),
        normalise_items(items, "ml-100k.item"),
    )


def item_titles(cache_dir: Path, path: Path | None = None) -> pd.Series:
    """Item titles by item id from MovieLens-100K (the wheel, or a GroupLens folder); empty for other data.

    The pipeline ranks ids; titles are only for people reading a recommendation
    (``retrain recommend``), so they stay out of the feature store.
    """
    try:
        if path is None:
            with zipfile.ZipFile(_fetch_wheel(Path(cache_dir))) as zf:
                items = _read_atomic_file(zf, "item").rename(columns={"movie_title": "title"})
        elif Path(path).is_dir() and (Path(path) / "u.item").exists():
            items = _read_table(Path(path) / "u.item", "|", ["item_id", "title", "release", "video", "url"] + [f"g{i}" for i in range(len(GENRES))])
        else:
            return pd.Series(dtype=str)
    except (DataError, zipfile.BadZipFile, KeyError, OSError):
        return pd.Series(dtype=str)
    return pd.Series(items["title"].astype(str).to_numpy(), index=pd.to_numeric(items["item_id"]).astype("int64"))


def _read_atomic_file(zf: zipfile.ZipFile, ext: str) -> pd.DataFrame:
    """Read a RecBole 'atomic file': tab-separated, headers typed like ``rating:float``."""
    with zf.open(f"{_WHEEL_DIR}.{ext}") as fh:
        df = pd.read_csv(io.TextIOWrapper(fh, "utf-8"), sep="\t", dtype=str, quoting=csv.QUOTE_NONE)
    return df.rename(columns=lambda c: c.split(":")[0])


def _from_grouplens(folder: Path) -> RawData:
    """Read the plain GroupLens files: tab-separated u.data, pipe-separated latin-1 u.item/u.user."""
    inter = _read_table(folder / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    flags = [f"g{i}" for i in range(len(GENRES))]
    items = _read_table(folder / "u.item", "|", ["item_id", "title", "release", "video", "url", *flags])
    users = _read_table(folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"])
    flagged = items[flags].apply(pd.to_numeric, errors="coerce").fillna(0).astype(bool).to_numpy()
    items["genres"] = [_genres(g for g, on in zip(GENRES, row) if on) for row in flagged]
    items["release_year"] = items["release"].str[-4:]  # "01-Jan-1995"
    return RawData(
        _normalise_interactions(inter, "u.data"), normalise_users(users, "u.user"), normalise_items(items, "u.item")
    )


def _read_table(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path.name}: file not found in {path.parent}")
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE)
    except Exception as exc:
        raise DataError(f"{path.name}: unreadable ({last_line(exc)})") from None
    if df.shape[1] != len(names):
        raise DataError(f"{path.name}: expected {len(names)} '{sep}'-separated columns, found {df.shape[1]}")
    df.columns = names
    return df


def _genres(names: Iterable[str]) -> str:
    """'|'-join genre names; GroupLens' 'unknown' genre means no genre."""
    return "|".join(g for g in names if g and g != "unknown")


def _years(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").fillna(0).astype("int64")


def _normalise_interactions(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Coerce to the canonical interaction columns, or say which column is wrong."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing required column(s) {', '.join(missing)}")
    out = pd.DataFrame({c: _integers(df[c], name, c) for c in ("user_id", "item_id")})
    out["timestamp"] = _timestamps(df["timestamp"], name)
    out["rating"] = _numbers(df["rating"], name, "rating") if "rating" in df.columns else 1.0
    return out.reset_index(drop=True)


def _numbers(s: pd.Series, name: str, col: str) -> pd.Series:
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna()
    if bad.any():
        raise DataError(f"{name}: column {col} has {int(bad.sum())} non-numeric value(s), e.g. {s[bad].iloc[0]!r}")
    return num.astype("float64")


def _integers(s: pd.Series, name: str, col: str) -> pd.Series:
    num = _numbers(s, name, col)
    if (num % 1 != 0).any():
        raise DataError(f"{name}: column {col} has non-integer value(s), e.g. {num[num % 1 != 0].iloc[0]!r}")
    return num.astype("int64")


def _timestamps(s: pd.Series, name: str) -> pd.Series:
    """Unix seconds or parseable datetimes; naive datetimes are taken as UTC."""
    if pd.api.types.is_datetime64_any_dtype(s):
        ts = pd.to_datetime(s, utc=True)
    else:
        num = pd.to_numeric(s, errors="coerce")
        if num.notna().all():
            ts = pd.to_datetime(num, unit="s", utc=True)
        else:
            ts = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
    if ts.isna().any():
        raise DataError(f"{name}: column timestamp has unparseable value(s), e.g. {s[ts.isna()].iloc[0]!r}")
    return ts.astype("datetime64[ns, UTC]")


def normalise_users(users: pd.DataFrame, name: str) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": _integers(users["user_id"], name, "user_id")})
    out["age"] = _years(users["age"])
    for col in ("gender", "occupation"):
        out[col] = users[col].fillna("unknown").astype(str)
    return out


def normalise_items(items: pd.DataFrame, name: str) -> pd.DataFrame:
    out = pd.DataFrame({"item_id": _integers(items["item_id"], name, "item_id")})
    out["genres"] = items["genres"].astype(str)
    out["release_year"] = _years(items["release_year"])
    return out


def last_line(exc: object) -> str:
    """The last non-empty line of an error text (pip and pyarrow put the gist there)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
