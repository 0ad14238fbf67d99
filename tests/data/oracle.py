"""The full recomputation of the daily feature rows over a whole log, as the package did before
the rows were computed forward from a state: the oracle the incremental rows must equal.

``stats_tables`` builds a dense users x days grid (``_Grid``) and ``history_table`` walks every
user's events; both are too big at scale, which is why ``recsys_retrain.data.rolling`` replaced them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_retrain.data.features import DAY, ITEM_STATS, NEVER, TS, USER_STATS, typed


def stats_tables(log: pd.DataFrame, since: pd.Timestamp | None = None) -> dict[str, pd.DataFrame]:
    """``user_stats`` and ``item_stats`` rows stamped ``since`` (a midnight) or later; all if None.

    ``log``: every stored interaction (user_id, item_id, timestamp, rating), any order.
    """
    log = log.reset_index(drop=True)
    day = log["timestamp"].dt.floor("D")
    origin = day.min()
    d = ((day - origin) // DAY).to_numpy(dtype=np.int64)
    n_stamps = int(d.max()) + 2  # stamps origin .. last day + 1
    first = 0 if since is None else max(0, int((since - origin) // DAY))
    rating = log["rating"].to_numpy(dtype=np.float64)
    out = {}
    for key, entity in (("user_id", "user"), ("item_id", "item")):
        codes, ids = pd.factorize(log[key], sort=True)
        g = _Grid(codes, len(ids), d, n_stamps)
        cols = {
            f"{entity}_n_interactions": g.before,
            f"{entity}_interactions_7d": g.trailing(7),
            f"{entity}_interactions_30d": g.trailing(30),
            f"{entity}_mean_rating": np.divide(
                g.cumulative(rating), g.before, out=np.zeros(g.before.shape), where=g.before > 0
            ),
        }
        if entity == "user":
            new_pair = ~pd.DataFrame({"u": log["user_id"], "i": log["item_id"], "d": d}).sort_values("d", kind="stable").duplicated(["u", "i"])
            cols["user_distinct_items"] = g.cumulative(new_pair.sort_index().to_numpy(dtype=np.float64)).astype(np.int64)
            cols["user_days_since_last"] = g.days_since_last()
            order = USER_STATS
        else:
            cols["item_popularity_rank"] = _rank_desc(cols["item_interactions_30d"], g.first_day)
            cols["item_days_since_first"] = g.days_since_first()
            order = ITEM_STATS
        out[f"{entity}_stats"] = g.rows(key, ids, origin, first, {c: cols[c] for c in order})
    return out


class _Grid:
    """Per-entity, per-stamp matrices (entities x stamps) of one entity kind."""

    def __init__(self, codes: np.ndarray, n: int, day: np.ndarray, n_stamps: int):
        self.codes, self.day, self.shape = codes, day, (n, n_stamps)
        self.counts = self._daily(np.ones(len(codes)))
        self.before = self._before(self.counts).astype(np.int64)
        self.first_day = np.full(n, n_stamps, dtype=np.int64)
        np.minimum.at(self.first_day, codes, day)

    def _daily(self, weights: np.ndarray) -> np.ndarray:
        flat = np.bincount(self.codes * self.shape[1] + self.day, weights=weights, minlength=self.shape[0] * self.shape[1])
        return flat.reshape(self.shape)

    @staticmethod
    def _before(daily: np.ndarray) -> np.ndarray:
        """Sum over days strictly before each stamp."""
        out = np.zeros_like(daily)
        np.cumsum(daily[:, :-1], axis=1, out=out[:, 1:])
        return out

    def cumulative(self, weights: np.ndarray) -> np.ndarray:
        return self._before(self._daily(weights))

    def trailing(self, days: int) -> np.ndarray:
        """Events in the ``days`` days before each stamp."""
        lagged = np.zeros_like(self.before)
        if days < self.shape[1]:
            lagged[:, days:] = self.before[:, :-days]
        return self.before - lagged

    def days_since_last(self) -> np.ndarray:
        active = np.where(self.counts > 0, np.arange(self.shape[1]), -1)
        last = np.full(self.shape, -1, dtype=np.int64)
        last[:, 1:] = np.maximum.accumulate(active, axis=1)[:, :-1]
        return np.where(last >= 0, np.arange(self.shape[1]) - last, NEVER)

    def days_since_first(self) -> np.ndarray:
        since = np.arange(self.shape[1])[None, :] - self.first_day[:, None]
        return np.where(since > 0, since, NEVER)

    def rows(self, key: str, ids, origin: pd.Timestamp, first: int, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        """Long format: one row per entity and stamp from its first day (and ``first``) on."""
        stamps = np.arange(self.shape[1])
        mask = (stamps[None, :] >= self.first_day[:, None]) & (stamps[None, :] >= first)
        e, s = np.nonzero(mask)
        df = pd.DataFrame({key: np.asarray(ids, dtype=np.int64)[e]})
        for name, values in cols.items():
            df[name] = values[e, s]
        df[TS] = (origin + pd.to_timedelta(s, unit="D")).astype("datetime64[ns, UTC]")
        return typed(df)


def _rank_desc(values: np.ndarray, first_day: np.ndarray) -> np.ndarray:
    """1 + the number of items with a strictly larger value at the same stamp (ties share)."""
    ranks = np.zeros(values.shape, dtype=np.int64)
    for s in range(values.shape[1]):
        col = np.where(first_day <= s, values[:, s], -1)  # items not yet seen never outrank
        ordered = np.sort(col)
        ranks[:, s] = len(col) - np.searchsorted(ordered, col, side="right") + 1
    return ranks


def history_table(log: pd.DataFrame, cap: int, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """``user_history`` rows: what the served model reads of a user's past, stamped like the stats.

    For every user and every day ``d`` with one of their events, one row stamped ``d + 1``
    (00:00 UTC) describing the user as of that midnight: ``user_recent_items``, the item
    ids of the ``cap`` most recent interactions (oldest first; events of one second in
    item-id order, as the log is stored), and ``user_seen_items``, every distinct item
    id, sorted. A user's row stays true until their next active day, so the table is
    sparse (no dense grid): its size follows the events, not users x days. Only rows
    stamped ``since`` or later when given (a batch from ``since`` changes no earlier row).

    Example:
        >>> t = pd.to_datetime(["2000-01-01 10:00", "2000-01-01 11:00", "2000-01-03 09:00"], utc=True)
        >>> log = pd.DataFrame({"user_id": [7, 7, 7], "item_id": [5, 3, 5], "timestamp": t})
        >>> history_table(log, cap=2)[["event_timestamp", "user_recent_items", "user_seen_items"]].values.tolist()
        [[Timestamp('2000-01-02 00:00:00+0000', tz='UTC'), [5, 3], [3, 5]], [Timestamp('2000-01-04 00:00:00+0000', tz='UTC'), [3, 5], [3, 5]]]
    """
    ordered = log.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    users = ordered["user_id"].to_numpy(np.int64)
    items = ordered["item_id"].to_numpy(np.int64)
    stamps = (ordered["timestamp"].dt.floor("D") + DAY).dt.tz_convert(None).to_numpy("datetime64[ns]")  # UTC, naive
    first = None if since is None else pd.Timestamp(since).tz_convert(None).to_datetime64()
    rows_user, rows_ts, rows_recent, rows_seen = [], [], [], []
    bounds = np.flatnonzero(np.diff(users)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(users)]):
        user_stamps = stamps[lo:hi]
        ends = np.flatnonzero(np.r_[user_stamps[1:] != user_stamps[:-1], True]) + 1  # one past each day's last event
        for end in ends:
            stamp = user_stamps[end - 1]
            if first is not None and stamp < first:
                continue
            past = items[lo : lo + end]
            rows_user.append(users[lo])
            rows_ts.append(stamp)
            rows_recent.append(past[-cap:].tolist())
            rows_seen.append(np.unique(past).tolist())
    return pd.DataFrame({
        "user_id": np.asarray(rows_user, np.int64),
        "user_recent_items": rows_recent,
        "user_seen_items": rows_seen,
        TS: pd.to_datetime(np.asarray(rows_ts, "datetime64[ns]")).tz_localize("UTC"),
    })
