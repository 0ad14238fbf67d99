"""Drift sandbox: seeded no-drift resampling and composable drift injectors.

Everything works on windows with the data stage's core columns (``BASE_COLUMNS``, a
subset of ``recsys_retrain.data.WINDOW_COLUMNS``: what ``recsys_retrain.drift`` reads; extra columns
of a real window pass through untouched).

* :func:`base_log` turns :class:`~recsys_retrain.data.RawData` into one such window over the
  whole log (side features joined, interaction counts over the log).
* :func:`resample_window` / :func:`no_drift_pair` draw windows from a *stationary*
  version of the base log: they resample whole sessions (one user's rows on one UTC
  day) with replacement and place each on a day of the new window with the same
  weekday, keeping its time of day. Reference and current windows drawn this way come
  from the same process, so any drift verdict on them is a false positive. Sessions,
  not rows, are resampled because a heavy user's burst is what makes real windows
  noisy; a row-level resampler would make the detector look better than it is.
* Injectors are small callables ``(window, rng, catalogue) -> window`` made by
  factories with a magnitude (:func:`popularity_shift`, :func:`new_item_influx`,
  :func:`taste_change`, :func:`rating_inflation`, :func:`sparsity_change`,
  :func:`regime_change`). :func:`inject` applies several in order with one seed, so
  drifts compose. An injector never mutates its input; item side features of a
  re-targeted row always come from the catalogue (or, for new items, are made up
  consistently), so a window stays internally consistent. ``user_n_interactions`` and
  ``item_n_interactions`` are left as they were (drift does not read them).

``DRIFT_TYPES`` names each injector with three magnitudes (low, middle, high) for the
benchmark in ``bench/drift.py``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from recsys_retrain.data.load import RawData

BASE_COLUMNS = [
    "user_id", "item_id", "timestamp", "rating", "user_age", "user_gender", "user_occupation",
    "user_n_interactions", "item_genres", "item_release_year", "item_n_interactions",
]
Injector = Callable[[pd.DataFrame, np.random.Generator, pd.DataFrame], pd.DataFrame]
DAY_NS = 86_400 * 10**9


def base_log(raw: RawData) -> pd.DataFrame:
    """All interactions of ``raw`` as one window (side features joined; unknown -> defaults)."""
    inter = raw.interactions
    out = inter[["user_id", "item_id", "timestamp", "rating"]].copy()
    if not raw.users.empty:
        users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
        out = out.merge(users[["user_id", "user_age", "user_gender", "user_occupation"]], on="user_id", how="left")
    if not raw.items.empty:
        items = raw.items.rename(columns={"genres": "item_genres", "release_year": "item_release_year"})
        out = out.merge(items[["item_id", "item_genres", "item_release_year"]], on="item_id", how="left")
    defaults = {"user_age": 0, "user_gender": "unknown", "user_occupation": "unknown", "item_genres": "", "item_release_year": 0}
    for col, value in defaults.items():
        out[col] = out[col].fillna(value) if col in out.columns else value
    out["user_n_interactions"] = out.groupby("user_id")["item_id"].transform("size")
    out["item_n_interactions"] = out.groupby("item_id")["user_id"].transform("size")
    out = out.astype({"user_age": "int64", "item_release_year": "int64", "user_n_interactions": "int64", "item_n_interactions": "int64"})
    return out[BASE_COLUMNS].sort_values("timestamp", kind="stable", ignore_index=True)


def catalogue(log: pd.DataFrame) -> pd.DataFrame:
    """One row per item of ``log``: id, genres, release year, interaction count (descending)."""
    items = log.groupby("item_id", sort=False).agg(
        item_genres=("item_genres", "first"), item_release_year=("item_release_year", "first"), count=("user_id", "size")
    )
    return items.sort_values("count", ascending=False, kind="stable").reset_index()


# --------------------------------------------------------------------------- no drift


def resample_window(
    base: pd.DataFrame, start: pd.Timestamp, days: int, seed: int, sessions: int | None = None
) -> pd.DataFrame:
    """A window ``[start, start + days)`` of sessions drawn with replacement from ``base``.

    ``sessions`` defaults to the base log's sessions per day times ``days``. Each session
    keeps its rows, time of day and weekday (when ``days >= 7``; shorter windows take
    any day).
    """
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    ts = base["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    day = ts // DAY_NS
    session = pd.factorize(pd.Series(base["user_id"].to_numpy()) * 10**6 + (day - day.min()))[0]
    order = np.argsort(session, kind="stable")
    bounds = np.searchsorted(session[order], np.arange(session.max() + 2))
    n_sessions = session.max() + 1
    span_days = max(1, int(day.max() - day.min() + 1))
    k = sessions if sessions is not None else max(1, round(n_sessions / span_days * days))
    picked = rng.integers(0, n_sessions, k)
    sizes = bounds[picked + 1] - bounds[picked]
    rows = order[np.repeat(bounds[picked], sizes) + _ranges(sizes)]
    start_day = start.value // DAY_NS
    weekday = (day[order[bounds[picked]]] + 3) % 7  # 1970-01-01 was a Thursday (3)
    if days >= 7:
        first = (weekday - (start_day + 3)) % 7
        slots = (days - 1 - first) // 7 + 1
        offset = first + 7 * (rng.random(k) * slots).astype(int)
    else:
        offset = rng.integers(0, days, k)
    new_day = np.repeat(start_day + offset, sizes)
    out = base.iloc[rows].reset_index(drop=True)
    new_ts = new_day * DAY_NS + ts[rows] % DAY_NS
    out["timestamp"] = pd.to_datetime(new_ts, utc=True).astype("datetime64[ns, UTC]")
    return out.sort_values("timestamp", kind="stable", ignore_index=True)


def no_drift_pair(
    base: pd.DataFrame,
    seed: int,
    *,
    start: pd.Timestamp | str = "2000-01-03",
    days: int = 7,
    sessions: int | None = None,
    reference_days: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference of ``reference_days`` (default ``days``) from ``start`` and the ``days`` after it, from one process.

    ``sessions`` is the current window's count; the reference gets as many per day.
    """
    start = pd.Timestamp(start, tz="UTC") if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    ref_days = reference_days or days
    ref_sessions = None if sessions is None else max(1, round(sessions * ref_days / days))
    reference = resample_window(base, start, ref_days, seed * 2 + 1, ref_sessions)
    current = resample_window(base, start + pd.Timedelta(days=ref_days), days, seed * 2 + 2, sessions)
    return reference, current


def _ranges(sizes: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in sizes, concatenated."""
    ends = np.cumsum(sizes)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - sizes, sizes)


# --------------------------------------------------------------------------- injectors


def inject(window: pd.DataFrame, injectors: Sequence[Injector], seed: int, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Apply ``injectors`` in order with one seeded generator; ``items`` defaults to the window's catalogue."""
    rng = np.random.default_rng(seed)
    items = catalogue(window) if items is None else items
    for injector in injectors:
        window = injector(window, rng, items)
    return window


def popularity_shift(share: float, n_items: int = 10) -> Injector:
    """``n_items`` long-tail items (lower half of the catalogue by count) gain ``share`` of the rows."""
    _check_share(share)

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        tail = items.iloc[len(items) // 2 :] if len(items) > 1 else items
        targets = tail.iloc[rng.choice(len(tail), min(n_items, len(tail)), replace=False)]
        hit = rng.random(len(window)) < share
        return _retarget(window, hit, targets.iloc[rng.integers(0, len(targets), int(hit.sum()))])

    return apply


def new_item_influx(share: float, n_items: int = 20) -> Injector:
    """``share`` of the rows go to ``n_items`` brand-new items (new ids, newest release year)."""
    _check_share(share)

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        first = int(max(items["item_id"].max(), window["item_id"].max())) + 1
        donors = items.iloc[rng.integers(0, len(items), n_items)]
        fresh = pd.DataFrame(
            {
                "item_id": np.arange(first, first + n_items, dtype="int64"),
                "item_genres": donors["item_genres"].to_numpy(),
                "item_release_year": np.full(n_items, int(items["item_release_year"].max()), dtype="int64"),
            }
        )
        hit = rng.random(len(window)) < share
        return _retarget(window, hit, fresh.iloc[rng.integers(0, n_items, int(hit.sum()))])

    return apply


def taste_change(user_share: float, genres: tuple[str, str] | None = None) -> Injector:
    """A ``user_share`` of users swap two genres: their rows on genre A go to B items and back.

    Default pair: the catalogue's most-consumed genre and its least-consumed genre among
    those with at least 20 items. Items carrying both genres are left alone.
    """
    _check_share(user_share)

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        a, b = genres or _genre_pair(items)
        g = items["item_genres"].fillna("").str.split("|")
        has_a, has_b = g.map(lambda x: a in x).to_numpy(), g.map(lambda x: b in x).to_numpy()
        only_a, only_b = items[has_a & ~has_b], items[has_b & ~has_a]
        if only_a.empty or only_b.empty:
            return window
        users = window["user_id"].unique()
        chosen = users[rng.random(len(users)) < user_share]
        wg = window["item_genres"].fillna("").str.split("|")
        w_a, w_b = wg.map(lambda x: a in x).to_numpy(), wg.map(lambda x: b in x).to_numpy()
        mine = window["user_id"].isin(chosen).to_numpy()
        out = window
        for hit, pool in ((mine & w_a & ~w_b, only_b), (mine & w_b & ~w_a, only_a)):
            p = pool["count"].to_numpy(float) + 1.0
            out = _retarget(out, hit, pool.iloc[rng.choice(len(pool), int(hit.sum()), p=p / p.sum())])
        return out

    return apply


def rating_inflation(stars: float, low: float = 1.0, high: float = 5.0) -> Injector:
    """Every rating rises by ``stars`` on average (stochastic rounding), clipped to [low, high]."""

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        whole, frac = np.floor(stars), stars - np.floor(stars)
        step = whole + (rng.random(len(window)) < frac)
        out = window.copy()
        out["rating"] = np.clip(window["rating"].to_numpy(float) + step, low, high)
        return out

    return apply


def sparsity_change(drop: float) -> Injector:
    """A random ``drop`` share of the rows is removed (the rest is untouched)."""
    _check_share(drop)

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        return window[rng.random(len(window)) >= drop].reset_index(drop=True)

    return apply


def regime_change(share: float) -> Injector:
    """From a change point, the last ``share`` of the window (in time) lives in a new regime.

    In the new regime item popularity is reassigned: every catalogue item is mapped to
    another one through a random permutation, so the rows keep users, times and ratings
    but the head of the catalogue is suddenly different items.
    """
    _check_share(share)

    def apply(window: pd.DataFrame, rng: np.random.Generator, items: pd.DataFrame) -> pd.DataFrame:
        if window.empty:
            return window
        cut = window["timestamp"].quantile(1 - share) if share < 1 else window["timestamp"].min()
        hit = (window["timestamp"] >= cut).to_numpy() if share > 0 else np.zeros(len(window), bool)
        perm = pd.Series(rng.permutation(len(items)), index=items["item_id"].to_numpy())
        to = perm.reindex(window["item_id"].to_numpy()).to_numpy()
        known = ~np.isnan(to)
        hit &= known
        return _retarget(window, hit, items.iloc[to[hit].astype(int)])

    return apply


def _retarget(window: pd.DataFrame, hit: np.ndarray, targets: pd.DataFrame) -> pd.DataFrame:
    """Rows where ``hit`` get the item (id, genres, release year) of the next target row."""
    out = window.copy()
    if hit.any():
        for col in ("item_id", "item_genres", "item_release_year"):
            values = out[col].to_numpy(copy=True)
            values[hit] = targets[col].to_numpy()
            out[col] = values
    return out


def _genre_pair(items: pd.DataFrame) -> tuple[str, str]:
    g = items[["item_genres", "count"]].assign(genre=items["item_genres"].fillna("").str.split("|")).explode("genre")
    g = g[g["genre"] != ""]
    size = g.groupby("genre")["count"].agg(["sum", "size"])
    eligible = size[size["size"] >= 20] if (size["size"] >= 20).sum() >= 2 else size
    ranked = eligible.sort_values("sum", ascending=False).index
    return str(ranked[0]), str(ranked[-1])


def _check_share(x: float) -> None:
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"share must be within [0, 1], got {x}")


DRIFT_TYPES: dict[str, tuple[Callable[[float], Injector], tuple[float, float, float]]] = {
    "popularity_shift": (popularity_shift, (0.02, 0.05, 0.10)),
    "new_item_influx": (new_item_influx, (0.02, 0.05, 0.10)),
    "taste_change": (taste_change, (0.10, 0.25, 0.50)),
    "rating_inflation": (rating_inflation, (0.25, 0.50, 1.00)),
    "sparsity_change": (sparsity_change, (0.25, 0.50, 0.75)),
    "regime_change": (regime_change, (0.10, 0.25, 0.50)),
}
"""Drift type -> (injector factory, (low, middle, high) magnitudes) for the benchmark.

What the magnitudes mean on a week of MovieLens-100K (about 3,200 interactions):

* popularity_shift s: ten long-tail items (lower half of the catalogue) together take
  ``s`` of the week's interactions; at 0.05 each gets about 0.5 %, the share of a
  top-10 item, from about 16 different users.
* new_item_influx s: twenty brand-new items take ``s``; at 0.05 each gets about
  0.25 %, like a top-50 item: a release week the champion cannot rank.
* taste_change s: a share ``s`` of users swap their most- and least-consumed genre
  (Drama and a small genre); at 0.25 one user in four.
* rating_inflation s: ratings rise by ``s`` stars on average (clipped at 5); at 0.5
  half the ratings move one star up (mean 3.5 -> 3.9), as after a rating-widget
  change. A quarter star is within the week-to-week spread of who happens to rate
  (see the README's drift section).
* sparsity_change s: ``s`` of the interactions are lost at random; at 0.5 every
  session is halved.
* regime_change s: the last ``s`` of the week (in time) has a reshuffled popularity
  order; at 0.25 the last day and a half.
"""


# --------------------------------------------------------------------------- a drifting timeline


def drifting_timeline(
    raw: RawData,
    start: pd.Timestamp | str = "2000-01-03",
    weeks: int = 25,
    regime_week: int = 12,
    influx_week: int = 18,
    influx_share: float = 0.10,
    influx_items: int = 30,
    seed: int = 0,
) -> tuple[RawData, dict]:
    """Weeks of sessions resampled from ``raw`` (stationary), with two scheduled drifts that persist.

    Ground truth for a backtest: before ``regime_week`` nothing changes, so retraining
    can only add the newest weeks' sessions; from ``regime_week`` on, every item's
    behaviour moves to another item (one fixed permutation of the catalogue, so what
    a model learnt of each id is wrong from then on, until it retrains); from
    ``influx_week`` on, ``influx_share`` of the rows go to ``influx_items`` new items
    (new ids, with the genres of existing ones), which a model trained before can
    never rank. Both are where retraining must help.

    Args:
        raw: the source (side tables kept; new items are added to ``items``).
        start: the first week's Monday.
        weeks: length of the timeline.
        regime_week / influx_week: week index (from 0) of each drift.

    Returns:
        ``(RawData, truth)``: the timeline and its drift events (``truth[name]`` has
        ``week``, ``start`` and the magnitude).

    Example:
        >>> inter = pd.DataFrame({"user_id": [1, 2, 1, 2], "item_id": [10, 11, 11, 10], "rating": 4.0,
        ...     "timestamp": pd.to_datetime(["1998-01-05", "1998-01-06", "1998-01-12", "1998-01-13"], utc=True)})
        >>> items = pd.DataFrame({"item_id": [10, 11], "genres": ["Drama", "Comedy"], "release_year": [1990, 1995]})
        >>> timeline, truth = drifting_timeline(RawData(inter, pd.DataFrame(), items), weeks=3, regime_week=1,
        ...     influx_week=2, influx_items=2)
        >>> sorted(truth), timeline.items["item_id"].tolist()
        (['new_item_influx', 'regime_change'], [10, 11, 12, 13])
    """
    if not 0 < regime_week < weeks or not 0 < influx_week < weeks:
        raise ValueError(f"drift weeks must fall inside the {weeks}-week timeline, got {regime_week} and {influx_week}")
    _check_share(influx_share)
    start = pd.Timestamp(start, tz="UTC") if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    base = base_log(raw)
    items = catalogue(base)
    rng = np.random.default_rng(seed)
    perm = pd.Series(items["item_id"].to_numpy()[rng.permutation(len(items))], index=items["item_id"].to_numpy())
    first = int(max(items["item_id"].max(), raw.items["item_id"].max() if not raw.items.empty else 0)) + 1
    fresh_ids = np.arange(first, first + influx_items, dtype="int64")
    donors = items.iloc[rng.integers(0, len(items), influx_items)]
    frames = []
    for week in range(weeks):
        w = resample_window(base, start + pd.Timedelta(days=7 * week), 7, seed * 100_003 + week)
        ids = w["item_id"].to_numpy().copy()
        if week >= regime_week:
            ids = perm.reindex(ids).to_numpy().astype("int64")
        if week >= influx_week:
            hit = np.random.default_rng([seed, week]).random(len(ids)) < influx_share
            ids[hit] = fresh_ids[np.random.default_rng([seed, week, 1]).integers(0, influx_items, int(hit.sum()))]
        frames.append(w[["user_id", "timestamp", "rating"]].assign(item_id=ids))
    inter = pd.concat(frames, ignore_index=True)[["user_id", "item_id", "timestamp", "rating"]]
    # a session drawn twice into one week lands on the same day and times: one copy is kept (the data stage
    # quarantines repeated events), as are the rows the influx sends to the same new item at the same time
    inter = inter.drop_duplicates(["user_id", "item_id", "timestamp"], ignore_index=True)
    side = raw.items if not raw.items.empty else items.rename(columns={"item_genres": "genres", "item_release_year": "release_year"})
    new = pd.DataFrame({"item_id": fresh_ids, "genres": donors["item_genres"].to_numpy(),
                        "release_year": np.full(influx_items, int(items["item_release_year"].max()), dtype="int64")})
    new_items = pd.concat([side[["item_id", "genres", "release_year"]], new], ignore_index=True)
    when = {name: start + pd.Timedelta(days=7 * wk) for name, wk in (("regime", regime_week), ("influx", influx_week))}
    truth = {
        "regime_change": {"week": regime_week, "start": when["regime"].isoformat(), "share_of_items_remapped": 1.0},
        "new_item_influx": {"week": influx_week, "start": when["influx"].isoformat(), "share": influx_share,
                            "items": influx_items},
    }
    return RawData(inter.sort_values("timestamp", kind="stable", ignore_index=True), raw.users, new_items), truth
