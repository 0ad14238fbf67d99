"""Both windows turned into per-unit count matrices, one ``Observed`` per signal.

Units are users, or random groups of users past ``max_units``; a row weighs
``n_rows ** -user_weight_power`` of its user. What each signal observes: docs/drift.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_retrain.drift.signals import NEWCOMER_SIGNALS, REQUIRED_COLUMNS, Observed, Signal
from recsys_retrain.settings import DriftSettings

MAX_BINS = 64
"""Numeric signals with more distinct values are cut into this many pooled-quantile bins."""
DAY_NS = 86_400 * 10**9


def observe(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    signals: tuple[Signal, ...],
    settings: DriftSettings,
    reference_scores: np.ndarray | None,
    current_scores: np.ndarray | None,
) -> dict[str, Observed]:
    """Every signal as a (units x bins) matrix; units are users (or random groups of users)."""
    rng = np.random.default_rng(settings.seed)
    r_unit, r_users, r_weight = _units(reference["user_id"].to_numpy(), settings, rng)
    c_unit, c_users, c_weight = _units(current["user_id"].to_numpy(), settings, rng)
    n_ref_units = int(r_unit.max()) + 1
    units = np.concatenate([r_unit, c_unit + n_ref_units])
    n_units = n_ref_units + int(c_unit.max()) + 1
    weight = np.concatenate([r_weight, c_weight])
    user_key = np.concatenate([r_users, c_users + r_users.max() + 1])  # distinct users per side
    side = np.concatenate([np.zeros(len(reference), bool), np.ones(len(current), bool)])

    both = pd.concat([reference[list(REQUIRED_COLUMNS)], current[list(REQUIRED_COLUMNS)]], ignore_index=True)
    ts = both["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    items = both["item_id"].to_numpy()

    def rows(name: str, codes: np.ndarray, support: np.ndarray) -> None:
        keep = codes >= 0
        out[name] = _matrix(units[keep], codes[keep], weight[keep], n_units, len(support), support, side[keep], user_key[keep])

    out: dict[str, Observed] = {}
    wanted = {s.name: s for s in signals}
    rows("rating", *_numeric(both["rating"].to_numpy(float)))
    item_codes, item_index = pd.factorize(items)
    by_item = _keyed(units, item_codes, weight, n_units, len(item_index), side, user_key)
    for name in ("item_popularity_decile", "top_items_share", "rising_item_share", "new_item_share"):
        out[name] = by_item
    rows("hour_of_day", (ts // 3_600_000_000_000) % 24, np.array([f"{h:02d}" for h in range(24)], object))
    rows("day_of_week", (ts // DAY_NS + 3) % 7, np.array(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], object))
    year = both["item_release_year"].to_numpy(float)
    rows("item_release_year", *_numeric(np.where(year > 0, year, np.nan)))
    if "prediction_score" in wanted:
        n_ref, n_cur = len(reference), len(current)
        scores = [s if s is not None else np.full(n, np.nan) for s, n in ((reference_scores, n_ref), (current_scores, n_cur))]
        rows("prediction_score", *_numeric(np.concatenate(scores).astype(float)))
        if reference_scores is None or current_scores is None:
            out["prediction_score"].note = "scores given for one window only"

    # user-level signals: one observation per (side, user), weight 1
    first = np.unique(user_key, return_index=True)[1]
    u_units, u_side, u_key = units[first], side[first], user_key[first]
    ones = np.ones(len(first))
    out["user_activity"] = _activity(user_key, ts // DAY_NS, units, side, n_units)
    rows("session_pace", *_numeric(_pace(user_key, ts)))
    age = both["user_age"].to_numpy(float)[first]
    age_codes, age_support = _numeric(np.where(age > 0, age, np.nan))
    keep = age_codes >= 0
    out["user_age"] = _matrix(u_units[keep], age_codes[keep], ones[keep], n_units, len(age_support), age_support, u_side[keep], u_key[keep])
    out["genre"] = _genres(both["item_genres"], item_codes, len(item_index), units, weight, n_units, side, user_key)
    for obs in out.values():
        obs.n_ref_units = n_ref_units
    out.update(_newcomers(reference, current, settings, rng))
    return {name: out[name] for name in wanted}


def _activity(user_key: np.ndarray, day: np.ndarray, units: np.ndarray, side: np.ndarray, n_units: int) -> Observed:
    """log2 rows per session (a user's rows on one UTC day), one observation per session.

    Sessions, not users, so the distribution does not depend on the window's length:
    a longer window holds more of a heavy user's sessions, not bigger ones.
    """
    sessions = pd.DataFrame({"key": user_key, "day": day, "unit": units, "side": side})
    per = sessions.groupby(["key", "day"], sort=False).agg(size=("unit", "size"), unit=("unit", "first"), side=("side", "first"))
    codes, support = _numeric(np.log2(per["size"].to_numpy(float)))
    keys = per.index.get_level_values("key").to_numpy()
    return _matrix(per["unit"].to_numpy(), codes, per["size"].to_numpy(float), n_units, len(support), support, per["side"].to_numpy(), keys)


def _pace(user_key: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per row: log2(1 + seconds) since the same user's previous row on the same UTC day; NaN for a day's first row.

    Lost or thinned events (a broken tracker, a sampled log) leave sessions as long but
    sparser: the gaps between a user's interactions widen, which ``user_activity`` sees
    only through the coarser rows-per-session count (its small sessions just vanish).
    """
    order = np.lexsort((ts, user_key))
    key, t = user_key[order], ts[order]
    same = np.zeros(len(t), bool)
    same[1:] = (key[1:] == key[:-1]) & (t[1:] // DAY_NS == t[:-1] // DAY_NS)
    gap = np.full(len(t), np.nan)
    gap[1:] = np.where(same[1:], (t[1:] - t[:-1]) / 1e9, np.nan)
    out = np.empty(len(t))
    out[order] = np.log2(1.0 + gap)
    return out


def _keyed(
    units: np.ndarray, keys: np.ndarray, weight: np.ndarray, n_units: int, n_keys: int, side: np.ndarray, user_key: np.ndarray
) -> Observed:
    """Sparse (units x keys) weighted row counts for the signals recomputed per permutation."""
    shape = (n_units, max(n_keys, 1))
    matrix = sp.csr_matrix((weight, (units, keys)), shape=shape)
    raw = sp.csr_matrix((np.ones(len(keys)), (units, keys)), shape=shape)
    return Observed(matrix, np.array(["new", "seen"], object), _user_counts(side, user_key), raw=raw)


def _newcomers(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings, rng: np.random.Generator) -> dict[str, Observed]:
    """New-user rows of two equally long target windows, each against as much history before it.

    The current window's rows are new when their user is absent from the last ``H``
    days of the reference; the reference's own last days (as long as the current
    window) are the other target, with the ``H`` days before them as history. So the
    steady arrival of users is the baseline, and only an influx beyond it drifts. A
    user active in both windows could not be moved between reference and current,
    but the two targets do not overlap in time.
    """
    support = np.array(["new", "seen"], object)
    ref_ts, cur_ts = reference["timestamp"], current["timestamp"]
    span = cur_ts.max() - cur_ts.min()
    target_start = ref_ts.max() - span
    history = target_start - ref_ts.min()
    if history < span or span <= pd.Timedelta(0):
        note = f"reference spans {ref_ts.max() - ref_ts.min()}, under twice the current window's {span}"
        return {name: Observed(np.zeros((2, 2)), support, (0, 0), note=note, n_ref_units=1) for name in NEWCOMER_SIGNALS}
    ref_target = reference[ref_ts >= target_start]
    ref_history = reference[(ref_ts < target_start) & (ref_ts >= target_start - history)]
    cur_history = reference[ref_ts >= cur_ts.min() - history]
    r_unit, r_users, r_weight = _units(ref_target["user_id"].to_numpy(), settings, rng)
    c_unit, c_users, c_weight = _units(current["user_id"].to_numpy(), settings, rng)
    n_ref = int(r_unit.max()) + 1
    units = np.concatenate([r_unit, c_unit + n_ref])
    side = np.concatenate([np.zeros(len(ref_target), bool), np.ones(len(current), bool)])
    weight = np.concatenate([r_weight, c_weight])
    user_key = np.concatenate([r_users, c_users + r_users.max() + 1])
    out = {}
    for name, column in NEWCOMER_SIGNALS.items():
        seen_ref = ref_target[column].isin(ref_history[column].unique()).to_numpy()
        seen_cur = current[column].isin(cur_history[column].unique()).to_numpy()
        codes = np.concatenate([seen_ref, seen_cur]).astype(int)  # 0 = new, 1 = seen
        out[name] = _matrix(units, codes, weight, int(units.max()) + 1, 2, support, side, user_key)
        out[name].n_ref_units = n_ref
    return out


def _genres(
    genres: pd.Series, item_codes: np.ndarray, n_items: int, units: np.ndarray, weight: np.ndarray, n_units: int,
    side: np.ndarray, user_key: np.ndarray,
) -> Observed:
    """(unit x item) weights times an (item x genre) indicator."""
    genre_of = pd.Series(genres.to_numpy(), index=item_codes).groupby(level=0).first().reindex(range(n_items))
    split = genre_of.fillna("").astype(str).str.split("|").explode()
    split = split.replace("", "(none)")
    g_codes, g_labels = pd.factorize(split.to_numpy())
    indicator = sp.csr_matrix((np.ones(len(g_codes)), (split.index.to_numpy(), g_codes)), shape=(n_items, len(g_labels)))
    unit_item = sp.csr_matrix((weight, (units, item_codes)), shape=(n_units, n_items))
    counts = np.asarray((unit_item @ indicator).todense())
    genre_rows = np.asarray(indicator.sum(axis=1)).ravel()[item_codes] > 0
    return Observed(counts, np.asarray(g_labels, object), _user_counts(side[genre_rows], user_key[genre_rows]))


def _units(user_ids: np.ndarray, settings: DriftSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: unit index (user, or random group of users), user index, row weight."""
    user, uniques = pd.factorize(user_ids)
    if len(user) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    n_rows = np.bincount(user)
    weight = n_rows[user].astype(float) ** -settings.user_weight_power
    unit = user
    if len(uniques) > settings.max_units:
        unit = (rng.permutation(len(uniques)) % settings.max_units)[user]
    return unit, user, weight


def _numeric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin codes (-1 for NaN) and bin values: distinct values, or pooled-quantile bins past MAX_BINS."""
    finite = np.isfinite(values)
    codes = np.full(len(values), -1)
    if not finite.any():
        return codes, np.zeros(0)
    v = values[finite]
    support = np.unique(v)
    if len(support) <= MAX_BINS:
        codes[finite] = np.searchsorted(support, v)
        return codes, support
    edges = np.unique(np.quantile(v, np.linspace(0, 1, MAX_BINS + 1)))
    code = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(code, weights=v, minlength=len(edges) - 1)
    n = np.bincount(code, minlength=len(edges) - 1)
    keep = n > 0
    remap = np.cumsum(keep) - 1
    codes[finite] = remap[code]
    return codes, (sums[keep] / n[keep])


def _matrix(
    units: np.ndarray, codes: np.ndarray, weight: np.ndarray, n_units: int, k: int, support: np.ndarray,
    side: np.ndarray, user_key: np.ndarray,
) -> Observed:
    k = max(k, 1)
    counts = np.bincount(units * k + codes, weights=weight, minlength=n_units * k).reshape(n_units, k)
    obs = Observed(counts, support if len(support) else np.zeros(1), _user_counts(side, user_key))
    if isinstance(support, np.ndarray) and support.dtype != object and len(support) > 1:
        pooled = counts.sum(axis=0)
        p = pooled / pooled.sum()
        mean = float(p @ support)
        obs.pooled_sd = float(np.sqrt(max(p @ (support - mean) ** 2, 0.0)))
    return obs


def _user_counts(side: np.ndarray, user_key: np.ndarray) -> tuple[int, int]:
    return len(np.unique(user_key[~side])), len(np.unique(user_key[side]))
