"""The rolling feature rows, computed forward day by day from a small per-entity state.

The rows are those described in ``recsys_retrain.data.features``: for every entity,
one ``*_stats`` row per day from its first event's day to the day after the log's last
event, stamped 00:00 UTC and counting only earlier days; one ``user_history`` row per
user and active day, stamped the next midnight. A row stamped ``s`` depends only on
the events of days before ``s``, so the rows can be produced in day order from what
the past leaves behind, without a users x days matrix over the whole history:

- per entity: its first day, its count, its rating sum, its last active day and its
  daily counts of the last 31 days (a ring, for the 7- and 30-day windows);
- per user: the ``HISTORY_CAP`` most recent items and every distinct item seen.

``RollingState`` holds that for every entity seen so far, covering the events of the
days before ``next_day``. ``advance`` feeds it the events of ``next_day`` and later
and yields the rows of each stamp; memory follows the entities and the batch, never
the days of the history. ``bootstrap_feature_repo`` runs it from an empty state over
the whole log; ``ingest`` from the stored state over the batch (``recsys_retrain.data.parts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from recsys_retrain.data.features import HISTORY_CAP, ITEM_STATS, NEVER, TS, USER_STATS

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
RING = 31  # days of daily counts kept: the 30-day window and the day that leaves it


def day_numbers(ts: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 (UTC) of each timestamp."""
    return ((ts - EPOCH) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)


def stamp_of(day: int) -> pd.Timestamp:
    """The 00:00 UTC timestamp of day number ``day``."""
    return EPOCH + pd.Timedelta(days=int(day))


@dataclass
class EntityState:
    """Per-entity running totals of one entity kind, in order of first appearance."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rating_sum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    last_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ring: np.ndarray = field(default_factory=lambda: np.zeros((0, RING), np.int64))
    ring_day: np.ndarray = field(default_factory=lambda: np.full(RING, -10**9, np.int64))  # which day each column holds

    def __post_init__(self) -> None:
        self._index = pd.Index(self.ids)
        self._order = np.argsort(self.ids, kind="stable")

    def codes(self, keys: np.ndarray, day: int) -> np.ndarray:
        """Positions of ``keys``; ids never seen are added with first day ``day``."""
        pos = self._index.get_indexer(keys)
        if (pos < 0).any():
            fresh = pd.unique(keys[pos < 0])
            n = len(fresh)
            self.ids = np.r_[self.ids, fresh]
            self.first_day = np.r_[self.first_day, np.full(n, day, np.int64)]
            self.n = np.r_[self.n, np.zeros(n, np.int64)]
            self.rating_sum = np.r_[self.rating_sum, np.zeros(n)]
            self.last_day = np.r_[self.last_day, np.full(n, -1, np.int64)]
            self.ring = np.vstack([self.ring, np.zeros((n, RING), np.int64)])
            self.__post_init__()
            pos = self._index.get_indexer(keys)
        return pos

    def add_day(self, day: int, codes: np.ndarray, ratings: np.ndarray) -> None:
        """Count the events of ``day`` (``codes`` from ``codes``)."""
        col = day % RING
        if self.ring_day[col] != day:
            self.ring[:, col] = 0
            self.ring_day[col] = day
        counts = np.bincount(codes, minlength=len(self.ids))
        self.ring[:, col] += counts
        self.n += counts
        self.rating_sum += np.bincount(codes, weights=ratings, minlength=len(self.ids))
        self.last_day[counts > 0] = day

    def trailing(self, stamp: int, days: int) -> np.ndarray:
        """Events in the ``days`` days before ``stamp`` (a product with the days' mask: no copy of the ring)."""
        return self.ring @ ((self.ring_day >= stamp - days) & (self.ring_day < stamp)).astype(np.int64)

    def rows(self, stamp: int, key: str, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        """The rows stamped ``stamp`` of every entity seen by then, by id."""
        alive = self._order[self.first_day[self._order] <= stamp]
        df = pd.DataFrame({key: self.ids[alive]})
        for name, values in cols.items():
            df[name] = values[alive]
        df[TS] = pd.Series(stamp_of(stamp), index=df.index).astype("datetime64[ns, UTC]")
        return df

    def mean_rating(self) -> np.ndarray:
        return np.divide(self.rating_sum, self.n, out=np.zeros(len(self.n)), where=self.n > 0)

    def to_frame(self, key: str) -> pd.DataFrame:
        return pd.DataFrame({key: self.ids, "first_day": self.first_day, "n": self.n, "rating_sum": self.rating_sum,
                             "last_day": self.last_day})

    def ring_frame(self, key: str) -> pd.DataFrame:
        """The ring's non-zero daily counts, long: (key, day, count)."""
        e, c = np.nonzero(self.ring)
        return pd.DataFrame({key: self.ids[e], "day": self.ring_day[c], "count": self.ring[e, c]})

    @classmethod
    def from_frames(cls, key: str, totals: pd.DataFrame, ring: pd.DataFrame, next_day: int) -> EntityState:
        state = cls(ids=totals[key].to_numpy(np.int64), first_day=totals["first_day"].to_numpy(np.int64),
                    n=totals["n"].to_numpy(np.int64), rating_sum=totals["rating_sum"].to_numpy(np.float64),
                    last_day=totals["last_day"].to_numpy(np.int64), ring=np.zeros((len(totals), RING), np.int64))
        for day in range(next_day - RING, next_day):
            state.ring_day[day % RING] = day
        rows = state._index.get_indexer(ring[key].to_numpy(np.int64))
        days = ring["day"].to_numpy(np.int64)
        state.ring[rows, days % RING] = ring["count"].to_numpy(np.int64)
        return state


class ItemLists:
    """One int64 array per user (recent or seen items), stored flat so that saving, loading and copying cost no
    Python object per user: the arrays of users touched since the last ``compact`` wait in ``changed``."""

    def __init__(self, start: np.ndarray | None = None, length: np.ndarray | None = None, values: np.ndarray | None = None):
        self.start = np.zeros(0, np.int64) if start is None else np.asarray(start, np.int64)
        self.length = np.zeros(0, np.int64) if length is None else np.asarray(length, np.int64)
        self.values = np.zeros(0, np.int64) if values is None else np.asarray(values, np.int64)
        self.changed: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, code: int) -> np.ndarray:
        held = self.changed.get(int(code))
        if held is not None:
            return held
        lo = self.start[code]
        return self.values[lo : lo + self.length[code]]

    def __setitem__(self, code: int, values: np.ndarray) -> None:
        self.changed[int(code)] = values

    def grow(self, n: int) -> None:
        """``n`` more users, with empty arrays."""
        self.start, self.length = np.r_[self.start, np.zeros(n, np.int64)], np.r_[self.length, np.zeros(n, np.int64)]

    def copy(self) -> ItemLists:
        out = ItemLists(self.start.copy(), self.length.copy(), self.values)  # values are never written in place
        out.changed = dict(self.changed)
        return out

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, length, values) holding every array: those replaced since the last flush are appended.

        The values are rewritten in user order only once more than half of them are stale,
        so saving after a batch costs the batch's users, not a reorder of every user's items.
        """
        if self.changed:
            codes = np.fromiter(self.changed, np.int64, len(self.changed))
            arrays = [self.changed[int(c)] for c in codes]
            lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
            self.start[codes] = len(self.values) + np.r_[0, np.cumsum(lengths)[:-1]]
            self.length[codes] = lengths
            self.values = np.concatenate([self.values, *arrays]).astype(np.int64)
            self.changed = {}
        total = int(self.length.sum())
        if len(self.values) > 2 * total:
            offsets = np.r_[0, np.cumsum(self.length)]
            self.values = self.values[np.repeat(self.start - offsets[:-1], self.length) + np.arange(total)]
            self.start = offsets[:-1].copy()
        return self.start, self.length, self.values

    @classmethod
    def from_flat(cls, offsets: np.ndarray, values: np.ndarray) -> ItemLists:
        return cls(offsets[:-1], np.diff(offsets), values)


@dataclass
class RollingState:
    """Everything the rows of later days need of the events before ``next_day``."""

    next_day: int | None = None  # None: no event yet
    users: EntityState = field(default_factory=EntityState)
    items: EntityState = field(default_factory=EntityState)
    recent: ItemLists = field(default_factory=ItemLists)  # per user (users' order): last HISTORY_CAP items
    seen: ItemLists = field(default_factory=ItemLists)  # per user: distinct items, sorted
    distinct: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per user: len(seen)


@dataclass(frozen=True)
class StampRows:
    """The rows of one stamp: ``user_stats``/``item_stats`` (every entity seen by then) and ``user_history``
    (users active the day before; None when nobody was)."""

    day: int
    user_stats: pd.DataFrame
    item_stats: pd.DataFrame
    user_history: pd.DataFrame | None


def advance(state: RollingState, events: pd.DataFrame, cap: int = HISTORY_CAP) -> Iterator[StampRows]:
    """Feed ``events`` (user_id, item_id, timestamp, rating; days >= ``state.next_day``) and yield the
    rows stamped ``state.next_day`` through the day after the last event, in order.

    ``state`` is updated in place; once the generator is exhausted it covers every day
    before the last event's day (whose events a later batch may still extend), so the
    caller saves it and the next batch restarts from that day's stored events.
    Returns nothing for an empty ``events``.
    """
    if events.empty:
        return
    events = events.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    days = day_numbers(events["timestamp"])
    first, last = int(days[0]), int(days[-1])
    if state.next_day is not None and first < state.next_day:
        raise ValueError(f"events of day {first} are before the state's next day {state.next_day}")
    start = first if state.next_day is None else state.next_day
    bounds = np.searchsorted(days, np.arange(start, last + 2))
    users, items = events["user_id"].to_numpy(np.int64), events["item_id"].to_numpy(np.int64)
    ratings = events["rating"].to_numpy(np.float64)
    history = None
    for day in range(start, last + 2):
        lo, hi = bounds[day - start], bounds[day + 1 - start]
        u = state.users.codes(users[lo:hi], day)
        i = state.items.codes(items[lo:hi], day)
        _grow_history(state)
        yield StampRows(day, _user_rows(state, day), _item_rows(state, day), history)
        if day == last:
            state.next_day = last
            yield from _after_last(state, u, i, items[lo:hi], ratings[lo:hi], day, cap)
            return
        history = _add(state, day, u, i, items[lo:hi], ratings[lo:hi], cap)
        state.next_day = day + 1


def _after_last(state: RollingState, u, i, items, ratings, day: int, cap: int) -> Iterator[StampRows]:
    """The last day's events are counted into a copy, so ``state`` keeps covering the days before it."""
    ahead = RollingState(day, _copy(state.users), _copy(state.items), state.recent.copy(), state.seen.copy(),
                         state.distinct.copy())
    history = _add(ahead, day, u, i, items, ratings, cap)
    yield StampRows(day + 1, _user_rows(ahead, day + 1), _item_rows(ahead, day + 1), history)


def _copy(e: EntityState) -> EntityState:
    return EntityState(e.ids.copy(), e.first_day.copy(), e.n.copy(), e.rating_sum.copy(), e.last_day.copy(),
                       e.ring.copy(), e.ring_day.copy())


def _grow_history(state: RollingState) -> None:
    missing = len(state.users.ids) - len(state.recent)
    state.recent.grow(missing)
    state.seen.grow(missing)
    state.distinct = np.r_[state.distinct, np.zeros(missing, np.int64)]


def _add(state: RollingState, day: int, u: np.ndarray, i: np.ndarray, items: np.ndarray, ratings: np.ndarray,
         cap: int) -> pd.DataFrame | None:
    """Count one day's events; the ``user_history`` rows they make (stamped the next day)."""
    state.users.add_day(day, u, ratings)
    state.items.add_day(day, i, ratings)
    if not len(u):
        return None
    order = np.argsort(u, kind="stable")  # per user: (timestamp, item) order, as the events are sorted
    u_sorted, items_sorted = u[order], items[order]
    cuts = np.flatnonzero(np.diff(u_sorted)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(u_sorted)]
    active = u_sorted[starts]
    for code, lo, hi in zip(active, starts, ends):
        today = items_sorted[lo:hi]
        state.recent[code] = np.r_[state.recent[code], today][-cap:]
        state.seen[code] = np.union1d(state.seen[code], today)
        state.distinct[code] = len(state.seen[code])
    by_id = np.argsort(state.users.ids[active], kind="stable")
    active = active[by_id]
    return history_frame(state.users.ids[active], [state.recent[c] for c in active], [state.seen[c] for c in active],
                         day + 1)


def history_frame(user_ids: np.ndarray, recent: list[np.ndarray], seen: list[np.ndarray], stamp: int) -> pd.DataFrame:
    """``user_history`` rows of one stamp."""
    return pd.DataFrame({
        "user_id": np.asarray(user_ids, np.int64),
        "user_recent_items": [r.tolist() for r in recent],
        "user_seen_items": [s.tolist() for s in seen],
        TS: pd.Series(stamp_of(stamp), index=range(len(user_ids))).astype("datetime64[ns, UTC]"),
    })


def _user_rows(state: RollingState, stamp: int) -> pd.DataFrame:
    u = state.users
    cols = {
        "user_n_interactions": u.n, "user_interactions_7d": u.trailing(stamp, 7),
        "user_interactions_30d": u.trailing(stamp, 30), "user_distinct_items": state.distinct,
        "user_mean_rating": u.mean_rating(),
        "user_days_since_last": np.where(u.last_day >= 0, stamp - u.last_day, NEVER),
    }
    return u.rows(stamp, "user_id", {c: cols[c] for c in USER_STATS})


def _item_rows(state: RollingState, stamp: int) -> pd.DataFrame:
    it = state.items
    c30 = it.trailing(stamp, 30)
    alive = it.first_day <= stamp
    ordered = np.sort(c30[alive])
    since = stamp - it.first_day
    cols = {
        "item_n_interactions": it.n, "item_interactions_7d": it.trailing(stamp, 7), "item_interactions_30d": c30,
        "item_popularity_rank": len(ordered) - np.searchsorted(ordered, c30, side="right") + 1,  # ties share
        "item_days_since_first": np.where(since > 0, since, NEVER), "item_mean_rating": it.mean_rating(),
    }
    return it.rows(stamp, "item_id", {c: cols[c] for c in ITEM_STATS})
