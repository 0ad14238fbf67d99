"""Row checks with pandera: bad rows go to a quarantine parquet with a reason.

One schema serves both entry points. ``check_events`` takes a batch as written by its
producer (ids may be strings, timestamps unix seconds or ISO text, types mixed within a
column) and splits it into normalised good rows and quarantined bad ones, so that one
unparseable value costs one row, not the batch. ``validate`` checks an already typed
window before training. Each failed check names itself in the ``reason`` column; a row
failing several checks lists them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.data.load import last_line
from recsys_retrain.io import write_with
from recsys_retrain.errors import DataError, ValidationError
from recsys_retrain.settings import DataSettings

KEYS = ("user_id", "item_id", "timestamp")
REQUIRED = (*KEYS, "rating")


def validate(df: pd.DataFrame, settings: DataSettings, quarantine_path: Path) -> pd.DataFrame:
    """Drop bad rows into a quarantine parquet and return the rest.

    Raises ValidationError when the bad share exceeds ``settings.max_bad_share``: a
    window that bad says the source broke, and training on its remainder would hide it.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"window: missing required column(s) {', '.join(missing)}")
    frame = df.reset_index(drop=True)
    reasons = bad_rows(frame, settings)
    if reasons.empty:
        return frame
    bad = frame.loc[reasons.index].assign(reason=reasons)
    write_quarantine(bad, Path(quarantine_path))
    _raise_if_too_many("window", reasons, len(frame), settings, quarantine_path)
    return frame.drop(index=reasons.index).reset_index(drop=True)


def check_events(raw: pd.DataFrame, settings: DataSettings, name: str = "batch") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw events into (normalised good rows, bad rows with a ``reason``).

    Good rows have the canonical interaction columns (``user_id``, ``item_id`` int64,
    ``timestamp`` UTC, ``rating`` float64; 1.0 where the log has no ratings). Bad rows
    keep their values as written. Raises DataError when a required column is missing.
    """
    missing = [c for c in KEYS if c not in raw.columns]
    if missing:
        raise DataError(f"{name}: missing required column(s) {', '.join(missing)}")
    frame = raw.reset_index(drop=True)
    if "rating" not in frame.columns:
        frame = frame.assign(rating=1.0)
    reasons = bad_rows(frame, settings)
    good = frame.drop(index=reasons.index)
    clean = pd.DataFrame(
        {
            "user_id": _as_int(good["user_id"]).astype("int64"),
            "item_id": _as_int(good["item_id"]).astype("int64"),
            "timestamp": as_ts(good["timestamp"]),
            "rating": pd.to_numeric(good["rating"], errors="coerce").astype("float64"),
        }
    ).reset_index(drop=True)
    bad = raw.reset_index(drop=True).loc[reasons.index].assign(reason=reasons)
    return clean, bad


def bad_rows(frame: pd.DataFrame, settings: DataSettings) -> pd.Series:
    """Every failed check per row label (pandera, lazy), joined into one reason."""
    import pandera.pandas as pa

    latest = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=settings.future_tolerance_s)
    lo, hi = settings.rating_min, settings.rating_max

    def integer(col: str) -> list:
        return [
            pa.Check(lambda s: _as_int(s).notna(), error=f"{col} not an integer"),
            pa.Check(lambda s: ~(_as_int(s) < 0), error=f"negative {col}"),
        ]

    schema = pa.DataFrameSchema(
        {
            "user_id": pa.Column(nullable=False, checks=integer("user_id")),
            "item_id": pa.Column(nullable=False, checks=integer("item_id")),
            "timestamp": pa.Column(
                nullable=False,
                checks=[
                    pa.Check(lambda s: as_ts(s).notna(), error="timestamp unparseable"),
                    pa.Check(lambda s: ~(as_ts(s) > latest), error="timestamp in the future"),
                ],
            ),
            "rating": pa.Column(
                nullable=False,
                checks=[
                    pa.Check(lambda s: pd.to_numeric(s, errors="coerce").notna(), error="rating not a number"),
                    pa.Check(
                        lambda s: ~(pd.to_numeric(s, errors="coerce").pipe(lambda r: (r < lo) | (r > hi))),
                        error=f"rating outside [{lo}, {hi}]",
                    ),
                ],
            ),
        },
        checks=[pa.Check(_first_of_each_event, error="duplicate event")],
    )
    try:
        schema.validate(frame[list(REQUIRED)], lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases.dropna(subset=["index"]).drop_duplicates(["index", "check"])
        text = [f"null {col}" if c == "not_nullable" else c for c, col in zip(cases["check"], cases["column"])]
        found = pd.Series(text, index=cases["index"].astype("int64"))
        return found.groupby(level=0).agg(lambda r: ", ".join(dict.fromkeys(r))).sort_index()
    return pd.Series(dtype=object)


def _first_of_each_event(df: pd.DataFrame) -> pd.Series:
    """False for the second and later copies of a (user, item, timestamp) event."""
    keys = pd.DataFrame({"u": _as_int(df["user_id"]), "i": _as_int(df["item_id"]), "t": as_ts(df["timestamp"])})
    return ~(keys.duplicated(keep="first") & keys.notna().all(axis=1))


def _as_int(s: pd.Series) -> pd.Series:
    """Integer-valued numbers (from ints, floats or numeric text); NaN for anything else."""
    if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    values = s.map(lambda v: None if isinstance(v, bool) else v) if s.dtype == object else s
    num = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(s) else s.where(False)
    return num.where(num % 1 == 0)


def as_ts(s: pd.Series) -> pd.Series:
    """Unix seconds (numbers or numeric text) or datetimes/ISO text, as UTC; NaT if neither."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return pd.to_datetime(s, utc=True).astype("datetime64[ns, UTC]")
    values = s.map(lambda v: None if isinstance(v, bool) else v) if s.dtype == object else s
    num = pd.to_numeric(values, errors="coerce")
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    is_num = num.notna()
    if is_num.any():
        out[is_num] = pd.to_datetime(num[is_num], unit="s", utc=True)
    rest = ~is_num & s.notna()
    if rest.any():
        text = s[rest].map(lambda v: v if isinstance(v, (str, pd.Timestamp)) else None)
        out[rest] = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    return out


def _raise_if_too_many(what: str, reasons: pd.Series, total: int, settings: DataSettings, where: Path) -> None:
    share = len(reasons) / max(total, 1)
    if share > settings.max_bad_share:
        examples = "; ".join(f"row {i}: {r}" for i, r in reasons.head(3).items())
        raise ValidationError(
            f"{what}: {len(reasons)} of {total} rows bad ({share:.1%} > max_bad_share "
            f"{settings.max_bad_share:.1%}), e.g. {examples}; quarantined to {where}"
        )


def write_quarantine(bad: pd.DataFrame, path: Path) -> None:
    """Quarantine rows as written; mixed-type columns are kept as their text."""
    out = bad.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    write_atomic(out, path)


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write parquet under a temporary name, then rename: readers never see half a file."""
    write_with(path, lambda tmp: to_parquet(df, tmp, path.name))


def to_parquet(df: pd.DataFrame, path: Path, name: str) -> None:
    try:
        df.to_parquet(path, index=False)
    except Exception as exc:  # pyarrow type and IO errors
        raise DataError(f"{name}: could not write ({last_line(exc)})") from None
