"""Interactions in, point-in-time feature windows out.

Loading normalises any source (MovieLens from the recbole wheel, a GroupLens folder,
a parquet/CSV log) to one ``RawData`` shape. ``bootstrap_feature_repo`` turns it into
the Feast repository's parquet sources and registers the definitions;
``pull_window`` then reads ``[t0, t1)`` and joins user/item features as they were at
each event, so training never sees the future. ``validate`` quarantines bad rows.

Feast is imported inside the functions that need it, so importing this module stays
cheap for DAG files.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from pipeline.errors import DataError, ValidationError
from pipeline.settings import DataSettings

RECBOLE_WHEEL = "recbole==1.2.1"
_WHEEL_FILE = "recbole-1.2.1-py3-none-any.whl"
_WHEEL_DIR = "recbole/dataset_example/ml-100k/ml-100k"
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
FEATURE_SERVICE = "two_tower_v1"
TS = "event_timestamp"  # Feast's default entity-dataframe timestamp column

USER_COLUMNS = ["user_id", "user_age", "user_gender", "user_occupation", "user_n_interactions"]
ITEM_COLUMNS = ["item_id", "item_genres", "item_release_year", "item_n_interactions"]
WINDOW_COLUMNS = ["user_id", "item_id", "timestamp", "rating", *USER_COLUMNS[1:], *ITEM_COLUMNS[1:]]
DEFAULTS: dict[str, object] = {
    "user_age": 0, "user_gender": "unknown", "user_occupation": "unknown", "user_n_interactions": 0,
    "item_genres": "", "item_release_year": 0, "item_n_interactions": 0,
}
_DTYPES = {
    "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
    "user_age": "int64", "user_gender": "object", "user_occupation": "object",
    "user_n_interactions": "int64", "item_genres": "object", "item_release_year": "int64",
    "item_n_interactions": "int64",
}


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
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path.name}: file not found ({path})")
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"{path.name}: unknown extension {path.suffix!r}, expected .parquet or .csv")
    try:
        df = readers[path.suffix.lower()](path)
    except Exception as exc:  # pyarrow and the csv parser raise many types
        raise DataError(f"{path.name}: unreadable ({_one_line(exc)})") from None
    return _normalise_interactions(df, path.name)


def _fetch_wheel(cache_dir: Path) -> Path:
    """Download the recbole wheel once; we read its bundled data, never install it."""
    wheel = cache_dir / _WHEEL_FILE
    if wheel.exists():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    cmd += [RECBOLE_WHEEL, "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        raise DataError(f"{RECBOLE_WHEEL}: pip download failed ({_one_line(proc.stderr or 'no wheel')})")
    return wheel


def _from_wheel(wheel: Path) -> RawData:
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter, items, users = (_read_atomic_file(zf, ext) for ext in ("inter", "item", "user"))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{wheel.name}: unreadable MovieLens data ({_one_line(exc)})") from None
    items["genres"] = items["class"].fillna("").map(lambda s: _genres(s.split()))
    return RawData(
        _normalise_interactions(inter, "ml-100k.inter"),
        _normalise_users(users, "ml-100k.user"),
        _normalise_items(items, "ml-100k.item"),
    )


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
        _normalise_interactions(inter, "u.data"), _normalise_users(users, "u.user"), _normalise_items(items, "u.item")
    )


def _read_table(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path.name}: file not found in {path.parent}")
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE)
    except Exception as exc:
        raise DataError(f"{path.name}: unreadable ({_one_line(exc)})") from None
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


def _normalise_users(users: pd.DataFrame, name: str) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": _integers(users["user_id"], name, "user_id")})
    out["age"] = _years(users["age"])
    for col in ("gender", "occupation"):
        out[col] = users[col].fillna("unknown").astype(str)
    return out


def _normalise_items(items: pd.DataFrame, name: str) -> pd.DataFrame:
    out = pd.DataFrame({"item_id": _integers(items["item_id"], name, "item_id")})
    out["genres"] = items["genres"].astype(str)
    out["release_year"] = _years(items["release_year"])
    return out


def _one_line(exc: object) -> str:
    """The last non-empty line of an error text (pip and pyarrow put the gist there)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


# --------------------------------------------------------------------------- feature repository


def bootstrap_feature_repo(raw: RawData, repo: Path) -> None:
    """Write the parquet sources under ``repo/data`` and register the repo's definitions.

    Every table is written to a temporary name first and renamed only after all were
    written, so a failure leaves the previous sources intact. Same data, same result.
    """
    repo = Path(repo).resolve()
    if raw.interactions.empty:
        raise DataError("interactions: no events to build features from")
    tables = _feature_tables(raw)
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    tmp = {name: data / f".{name}.parquet.tmp-{os.getpid()}" for name in tables}
    try:
        for name, df in tables.items():
            _to_parquet(df, tmp[name], f"{name}.parquet")
        for name in tables:
            os.replace(tmp[name], data / f"{name}.parquet")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    _apply(repo)


def _feature_tables(raw: RawData) -> dict[str, pd.DataFrame]:
    """Sources of every view; profiles are stamped at the first day, counts at day+1."""
    inter = raw.interactions
    start = inter["timestamp"].min().floor("D")
    users = _side_info(raw.users, ["user_id", "age", "gender", "occupation"], _normalise_users)
    items = _side_info(raw.items, ["item_id", "genres", "release_year"], _normalise_items)
    user_ids, item_ids = _ids(inter["user_id"], users["user_id"]), _ids(inter["item_id"], items["item_id"])
    users = users.rename(columns={c: f"user_{c}" for c in ("age", "gender", "occupation")})
    items = items.rename(columns={c: f"item_{c}" for c in ("genres", "release_year")})
    events = inter.rename(columns={"timestamp": TS}).sort_values([TS, "user_id", "item_id"], kind="stable")
    return {
        "interactions": events.reset_index(drop=True),
        "user_profile": _profile(user_ids, users, "user_id", ["user_age", "user_gender", "user_occupation"], start),
        "user_stats": _daily_counts(inter, user_ids, "user_id", "user_n_interactions", start),
        "item_profile": _profile(item_ids, items, "item_id", ["item_genres", "item_release_year"], start),
        "item_stats": _daily_counts(inter, item_ids, "item_id", "item_n_interactions", start),
    }


def _side_info(df: pd.DataFrame, columns: list[str], normalise) -> pd.DataFrame:
    """A generic log has no side tables; callers may pass them empty and without columns."""
    return normalise(pd.DataFrame(columns=columns), "side table") if df.empty else df


def _ids(*columns: pd.Series) -> pd.Series:
    return pd.Series(sorted(set().union(*(set(c.tolist()) for c in columns))), dtype="int64")


def _profile(ids: pd.Series, side: pd.DataFrame, key: str, cols: list[str], start: pd.Timestamp) -> pd.DataFrame:
    """One row per id (side info where known, defaults otherwise), valid from ``start``."""
    df = pd.DataFrame({key: ids}).merge(side.drop_duplicates(key, keep="last"), on=key, how="left")
    return _typed(df[[key, *cols]]).assign(**{TS: start})


def _daily_counts(inter: pd.DataFrame, ids: pd.Series, key: str, col: str, start: pd.Timestamp) -> pd.DataFrame:
    """Cumulative count through day d, stamped d+1 00:00 UTC, plus a 0 row at ``start``.

    The stamp keeps an event from seeing its own day's interactions; the 0 row exists
    because Feast's file store drops an entity row whose key has only later feature rows.
    """
    day = inter["timestamp"].dt.floor("D").rename(TS)
    daily = inter.groupby([inter[key], day]).size().rename(col).reset_index()
    daily[col] = daily.groupby(key)[col].cumsum().astype("int64")
    daily[TS] = daily[TS] + pd.Timedelta(days=1)
    zero = pd.DataFrame({key: ids, col: 0, TS: start})
    return pd.concat([zero, daily], ignore_index=True).sort_values([key, TS], kind="stable").reset_index(drop=True)


def _apply(repo: Path) -> None:
    """Register the repo's Feast objects, as ``feast apply`` would (without deleting)."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView
    from feast.data_source import DataSource

    kinds = (Entity, DataSource, FeatureView, FeatureService)
    with _definitions(repo) as modules:
        objects = {(type(o).__name__, o.name): o for m in modules for o in vars(m).values() if isinstance(o, kinds)}
    FeatureStore(repo_path=str(repo)).apply(list(objects.values()))


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
        raise DataError(f"{repo.name}: feature definitions do not import ({_one_line(exc)})") from None
    finally:
        sys.path.remove(str(repo))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


# --------------------------------------------------------------------------- retrieval


def pull_window(repo: Path, t0: datetime | str, t1: datetime | str) -> pd.DataFrame:
    """Interactions with t0 <= timestamp < t1 and the features each event could have seen."""
    store = _store(repo)
    path = _source_path(store, "interactions_source")
    events = pd.read_parquet(path, filters=[(TS, ">=", _utc(t0)), (TS, "<", _utc(t1))])
    if events.empty:
        return _typed(pd.DataFrame(columns=WINDOW_COLUMNS))
    for key in ("user_id", "item_id"):
        events = events.merge(_point_in_time(store, events[[key, TS]], key), on=[key, TS], how="left")
    out = events.rename(columns={TS: "timestamp"}).sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    return _typed(out[WINDOW_COLUMNS])


def item_catalogue(repo: Path, as_of: datetime | str) -> pd.DataFrame:
    """Every catalogue item with its features as of ``as_of`` (the candidates to rank)."""
    store = _store(repo)
    ids = pd.read_parquet(_source_path(store, "item_profile_source"), columns=["item_id"])["item_id"]
    return _as_of(store, "item_id", ids, as_of, ITEM_COLUMNS)


def user_features(repo: Path, user_ids: Iterable[int], as_of: datetime | str) -> pd.DataFrame:
    """Features of the given users as of ``as_of``; unknown users get the defaults."""
    return _as_of(_store(repo), "user_id", pd.Series(list(user_ids), dtype="int64"), as_of, USER_COLUMNS)


def _as_of(store, key: str, ids: pd.Series, as_of, columns: list[str]) -> pd.DataFrame:
    ids = pd.Series(sorted(set(ids.tolist())), dtype="int64")
    if ids.empty:
        return _typed(pd.DataFrame(columns=columns))
    feats = _point_in_time(store, pd.DataFrame({key: ids, TS: _utc(as_of)}), key)
    return _typed(pd.DataFrame({key: ids}).merge(feats.drop(columns=[TS]), on=key, how="left")[columns])


def _point_in_time(store, rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """One entity's service features for each distinct (key, timestamp): Feast's as-of join.

    Users and items are queried apart because Feast's file store keeps one result per
    (join keys of the requested views, timestamp): in one query, two same-second events
    of a user with different items would collapse into one row (feast-dev/feast#6787).
    It also drops a row whose key has only later feature rows; callers merge back onto
    their own keys, so such rows get the defaults instead of vanishing.
    """
    service = store.get_feature_service(FEATURE_SERVICE)
    prefix = key.removesuffix("_id") + "_"
    refs = [
        f"{p.name_to_use()}:{f.name}"
        for p in service.feature_view_projections
        for f in p.features
        if f.name.startswith(prefix)
    ]
    return store.get_historical_features(entity_df=rows.drop_duplicates(), features=refs).to_df()


def _store(repo: Path):
    from feast import FeatureStore

    repo = Path(repo).resolve()
    if not (repo / "feature_store.yaml").exists():
        raise DataError(f"{repo}: not a Feast repository (no feature_store.yaml)")
    if not (repo / "data" / "registry.db").exists():
        raise DataError(f"{repo.name}: feature repository not bootstrapped (run bootstrap_feature_repo)")
    return FeatureStore(repo_path=str(repo))


def _source_path(store, name: str) -> str:
    from feast.infra.offline_stores.file_source import FileSource

    source = store.get_data_source(name)
    return FileSource.get_uri_for_file_path(store.repo_path, source.path)


def _utc(value: datetime | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _fill(df: pd.DataFrame) -> pd.DataFrame:
    return df.fillna({c: v for c, v in DEFAULTS.items() if c in df.columns})


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Defaults for missing features, then the dtypes other stages rely on."""
    df = _fill(df)
    return df.astype({c: _DTYPES[c] for c in df.columns if c in _DTYPES}).reset_index(drop=True)


# --------------------------------------------------------------------------- validation


def validate(df: pd.DataFrame, settings: DataSettings, quarantine_path: Path) -> pd.DataFrame:
    """Drop bad rows into a quarantine parquet and return the rest.

    Raises ValidationError when the bad share exceeds ``settings.max_bad_share``: a
    window that bad says the source broke, and training on its remainder would hide it.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp", "rating") if c not in df.columns]
    if missing:
        raise DataError(f"window: missing required column(s) {', '.join(missing)}")
    frame = df.reset_index(drop=True)
    reasons = _bad_rows(frame, settings)
    if reasons.empty:
        return frame
    bad = frame.loc[reasons.index].assign(reason=reasons)
    _write_atomic(bad, Path(quarantine_path))
    share = len(bad) / len(frame)
    if share > settings.max_bad_share:
        examples = "; ".join(f"row {i}: {r}" for i, r in reasons.head(3).items())
        raise ValidationError(
            f"window: {len(bad)} of {len(frame)} rows bad ({share:.1%} > max_bad_share "
            f"{settings.max_bad_share:.1%}), e.g. {examples}; quarantined to {quarantine_path}"
        )
    return frame.drop(index=reasons.index).reset_index(drop=True)


def _bad_rows(frame: pd.DataFrame, settings: DataSettings) -> pd.Series:
    """Every failed check per row label (pandera, lazy), joined into one reason."""
    import pandera.pandas as pa

    latest = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=settings.future_tolerance_s)
    lo, hi = settings.rating_min, settings.rating_max
    schema = pa.DataFrameSchema(
        {
            "user_id": pa.Column(nullable=False, checks=pa.Check.ge(0, error="negative user_id")),
            "item_id": pa.Column(nullable=False, checks=pa.Check.ge(0, error="negative item_id")),
            "timestamp": pa.Column(
                nullable=False,
                checks=pa.Check(lambda s: pd.to_datetime(s, utc=True) <= latest, error="timestamp in the future"),
            ),
            "rating": pa.Column(nullable=False, checks=pa.Check.in_range(lo, hi, error=f"rating outside [{lo}, {hi}]")),
        },
        unique=["user_id", "item_id", "timestamp"],
        report_duplicates="exclude_first",
    )
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases.dropna(subset=["index"])
        labels = {"not_nullable": "null {}", "multiple_fields_uniqueness": "duplicate event"}
        text = [labels.get(c, c).format(col) for c, col in zip(cases["check"], cases["column"])]
        found = pd.Series(text, index=cases["index"].astype("int64"))
        return found.groupby(level=0).agg(lambda r: ", ".join(dict.fromkeys(r))).sort_index()
    return pd.Series(dtype=object)


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write parquet under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _to_parquet(df, tmp, path.name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _to_parquet(df: pd.DataFrame, path: Path, name: str) -> None:
    try:
        df.to_parquet(path, index=False)
    except Exception as exc:  # pyarrow type and IO errors
        raise DataError(f"{name}: could not write ({_one_line(exc)})") from None
