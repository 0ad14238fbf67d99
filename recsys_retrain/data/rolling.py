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
class Totals:
    """One entity kind's columns at one stamp (one value per entity, in codes' order)."""

    n: np.ndarray
    rating_sum: np.ndarray
    last_day: np.ndarray
    last_7d: np.ndarray
    last_30d: np.ndarray

    def mean_rating(self) -> np.ndarray:
        return np.divide(self.rating_sum, self.n, out=np.zeros(len(self.n)), where=self.n > 0)


@dataclass
class EntityState:
    """Per-entity running totals of one entity kind, in order of first appearance (an entity's code).

    ``days`` holds the daily counts of the last ``RING`` days sparsely (day -> the codes
    active that day and their counts): a day costs its active entities, never all of them.
    ``saved_rows``, ``touched`` and ``added_days`` say what changed since the state was
    last saved or loaded, so that saving writes only that (``recsys_retrain.data.parts``).
    """

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rating_sum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    last_day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    days: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    saved_rows: int = 0  # rows as last saved (or loaded); rows after them are new
    touched: list[np.ndarray] = field(default_factory=list)  # codes whose totals changed since
    added_days: list[int] = field(default_factory=list)  # days counted since

    def __post_init__(self) -> None:
        self._index: pd.Index | None = None
        self._order: np.ndarray | None = None

    @property
    def index(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(self.ids)
        return self._index

    @property
    def order(self) -> np.ndarray:
        """Codes in id order."""
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        return self._order

    def codes(self, keys: np.ndarray, day: int) -> np.ndarray:
        """Positions of ``keys``; ids never seen are added with first day ``day``."""
        pos = self.index.get_indexer(keys)
        if (pos < 0).any():
            fresh = pd.unique(keys[pos < 0])
            n = len(fresh)
            self.ids = np.r_[self.ids, fresh]
            self.first_day = np.r_[self.first_day, np.full(n, day, np.int64)]
            self.n = np.r_[self.n, np.zeros(n, np.int64)]
            self.rating_sum = np.r_[self.rating_sum, np.zeros(n)]
            self.last_day = np.r_[self.last_day, np.full(n, -1, np.int64)]
            self.__post_init__()
            pos = self.index.get_indexer(keys)
        return pos

    def add_day(self, day: int, codes: np.ndarray, ratings: np.ndarray) -> None:
        """Count the events of ``day`` (``codes`` from ``codes``)."""
        counts = np.bincount(codes, minlength=len(self.ids))
        active = np.flatnonzero(counts)
        self.n += counts
        self.rating_sum += np.bincount(codes, weights=ratings, minlength=len(self.ids))
        self.last_day[active] = day
        self.days[day] = (active, counts[active])
        for old in [d for d in self.days if d <= day - RING]:
            del self.days[old]
        self.touched.append(active)
        self.added_days.append(day)

    def trailing(self, stamp: int, days: int) -> np.ndarray:
        """Events in the ``days`` days before ``stamp``."""
        wanted = [self.days[d] for d in sorted(self.days) if stamp - days <= d < stamp]
        if not wanted:
            return np.zeros(len(self.ids), np.int64)
        codes, counts = np.concatenate([w[0] for w in wanted]), np.concatenate([w[1] for w in wanted])
        return np.bincount(codes, weights=counts, minlength=len(self.ids)).astype(np.int64)

    def at(self, stamp: int) -> Totals:
        """The columns of the rows stamped ``stamp``, from the days counted (all before ``stamp``)."""
        return Totals(self.n, self.rating_sum, self.last_day, self.trailing(stamp, 7), self.trailing(stamp, 30))

    def ahead(self, day: int, codes: np.ndarray, ratings: np.ndarray) -> Totals:
        """The columns stamped ``day + 1``: the days counted plus the events of ``day``, which are not counted in."""
        counts = np.bincount(codes, minlength=len(self.ids))
        rating_sum = self.rating_sum.copy()
        rating_sum += np.bincount(codes, weights=ratings, minlength=len(self.ids))  # as add_day sums them
        return Totals(self.n + counts, rating_sum, np.where(counts > 0, day, self.last_day),
                      self.trailing(day + 1, 7) + counts, self.trailing(day + 1, 30) + counts)

    def rows(self, stamp: int, key: str, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        """The rows stamped ``stamp`` of every entity seen by then, by id."""
        alive = self.order[self.first_day[self.order] <= stamp]
        df = pd.DataFrame({key: self.ids[alive]})
        for name, values in cols.items():
            df[name] = values[alive]
        df[TS] = pd.Series(stamp_of(stamp), index=df.index).astype("datetime64[ns, UTC]")
        return df

    def mark_saved(self) -> None:
        self.saved_rows, self.touched, self.added_days = len(self.ids), [], []

    @classmethod
    def from_frames(cls, key: str, totals: pd.DataFrame, ring: pd.DataFrame) -> EntityState:
        """The state as an earlier version stored it: totals, and the ring's non-zero counts (key, day, count)."""
        state = cls(ids=totals[key].to_numpy(np.int64), first_day=totals["first_day"].to_numpy(np.int64),
                    n=totals["n"].to_numpy(np.int64), rating_sum=totals["rating_sum"].to_numpy(np.float64),
                    last_day=totals["last_day"].to_numpy(np.int64))
        rows = state.index.get_indexer(ring[key].to_numpy(np.int64))
        days, counts = ring["day"].to_numpy(np.int64), ring["count"].to_numpy(np.int64)
        for day in np.unique(days):
            mine = days == day
            order = np.argsort(rows[mine], kind="stable")
            state.days[int(day)] = (rows[mine][order].astype(np.int64), counts[mine][order])
        return state


class ItemLists:
    """One int64 array per user (recent or seen items), stored flat so that saving, loading and copying cost no
    Python object per user: the arrays of users touched since the last ``fold`` wait in ``changed``.

    The values are ``values`` (as loaded: possibly a read-only map of the stored file, never
    written) followed by ``tail`` (arrays folded since); a user's array lies in one of them.
    """

    def __init__(self, start: np.ndarray | None = None, length: np.ndarray | None = None, values: np.ndarray | None = None):
        self.start = np.zeros(0, np.int64) if start is None else np.asarray(start, np.int64)
        self.length = np.zeros(0, np.int64) if length is None else np.asarray(length, np.int64)
        self.values = np.zeros(0, np.int64) if values is None else values
        self.tail = np.zeros(0, np.int64)
        self.changed: dict[int, np.ndarray] = {}
        self.saved_users, self.saved_values = len(self.length), len(self.values)  # as last saved (or loaded)
        self.touched: list[np.ndarray] = []  # codes whose start and length changed since

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, code: int) -> np.ndarray:
        held = self.changed.get(int(code))
        if held is not None:
            return held
        lo, n, base = int(self.start[code]), int(self.length[code]), len(self.values)
        return self.values[lo : lo + n] if lo < base else self.tail[lo - base : lo - base + n]

    def __setitem__(self, code: int, values: np.ndarray) -> None:
        self.changed[int(code)] = values

    def grow(self, n: int) -> None:
        """``n`` more users, with empty arrays."""
        self.start, self.length = np.r_[self.start, np.zeros(n, np.int64)], np.r_[self.length, np.zeros(n, np.int64)]

    def fold(self) -> bool:
        """Append the changed arrays to ``tail``; True when more than half of all values are then stale
        (``flush`` rewrites them in user order)."""
        if self.changed:
            codes = np.fromiter(self.changed, np.int64, len(self.changed))
            arrays = [self.changed[int(c)] for c in codes]
            lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
            self.start[codes] = len(self.values) + len(self.tail) + np.r_[0, np.cumsum(lengths)[:-1]]
            self.length[codes] = lengths
            self.tail = np.concatenate([self.tail, *arrays]).astype(np.int64)
            self.touched.append(codes)
            self.changed = {}
        return len(self.values) + len(self.tail) > 2 * int(self.length.sum())

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, length, values) holding every array: those replaced since the last flush are appended.

        The values are rewritten in user order only once more than half of them are stale,
        so saving after a batch costs the batch's users, not a reorder of every user's items.
        """
        stale = self.fold()
        values = np.concatenate([self.values, self.tail]) if len(self.tail) else np.asarray(self.values, np.int64)
        if stale:
            total = int(self.length.sum())
            offsets = np.r_[0, np.cumsum(self.length)]
            values = values[np.repeat(self.start - offsets[:-1], self.length) + np.arange(total)]
            self.start = offsets[:-1].copy()
        self.values, self.tail = values, np.zeros(0, np.int64)
        return self.start, self.length, self.values

    def mark_saved(self) -> None:
        self.saved_users, self.saved_values, self.touched = len(self.length), len(self.values) + len(self.tail), []

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
    generation: int = 0  # the stored commit it was loaded from or saved as (``recsys_retrain.data.parts``)


@dataclass(frozen=True)
class StampRows:
    """The rows of one stamp: ``user_stats``/``item_stats`` (every entity seen by then) and ``user_history``
    (users active the day before: empty when nobody was; None for the state's day, whose stored rows stand)."""

    day: int
    user_stats: pd.DataFrame
    item_stats: pd.DataFrame
    user_history: pd.DataFrame | None


def advance(state: RollingState, events: pd.DataFrame, cap: int = HISTORY_CAP,
            stored_through: int | None = None) -> Iterator[StampRows]:
    """Feed ``events`` (user_id, item_id, timestamp, rating; days >= ``state.next_day``) and yield the
    rows stamped ``state.next_day`` through the day after the last event, in order.

    ``state`` is updated in place; once the generator is exhausted it covers every day
    before the last event's day (whose events a later batch may still extend), so the
    caller saves it and the next batch restarts from that day's stored events.
    Returns nothing for an empty ``events``.

    ``stored_through``: the caller's promise that the rows stamped up to that day are
    stored, computed from every event before their stamp, for every entity the state
    has. A row stamped ``s`` depends only on the events before ``s``, so those stamps
    change only when an entity new to the state is first seen by then: the others are
    not yielded (nor computed).
    """
    if events.empty:
        return
    events = events.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    days = day_numbers(events["timestamp"])
    first, last = int(days[0]), int(days[-1])
    if state.next_day is not None and first < state.next_day:
        raise ValueError(f"events of day {first} are before the state's next day {state.next_day}")
    start = first if state.next_day is None else state.next_day
    known = (len(state.users.ids), len(state.items.ids))
    bounds = np.searchsorted(days, np.arange(start, last + 2))
    users, items = events["user_id"].to_numpy(np.int64), events["item_id"].to_numpy(np.int64)
    ratings = events["rating"].to_numpy(np.float64)
    history = None
    for day in range(start, last + 2):
        lo, hi = bounds[day - start], bounds[day + 1 - start]
        u = state.users.codes(users[lo:hi], day)
        i = state.items.codes(items[lo:hi], day)
        _grow_history(state)
        if stored_through is None or day > stored_through or _gains(state, day, known):
            yield StampRows(day, _user_rows(state, state.users.at(day), state.distinct, day),
                            _item_rows(state.items, state.items.at(day), day), history)
        if day == last:
            state.next_day = last
            yield _after_last(state, u, i, items[lo:hi], ratings[lo:hi], day, cap)
            return
        history = _add(state, day, u, i, items[lo:hi], ratings[lo:hi], cap)
        state.next_day = day + 1


def _gains(state: RollingState, day: int, known: tuple[int, int]) -> bool:
    """Whether the rows stamped ``day`` include entities the state did not know (``known``: its sizes then)."""
    return bool((state.users.first_day[known[0]:] <= day).any() or (state.items.first_day[known[1]:] <= day).any())


def _after_last(state: RollingState, u, i, items, ratings, day: int, cap: int) -> StampRows:
    """The rows stamped the day after the last: the last day's events are not counted into ``state``, which
    keeps covering the days before it; only its active entities differ from the state's columns."""
    active, recent, seen = _lists_after(state, u, items, cap)
    distinct = state.distinct.copy()
    distinct[active] = [len(s) for s in seen]
    history = _history_of(state, active, recent, seen, day + 1)
    return StampRows(day + 1, _user_rows(state, state.users.ahead(day, u, ratings), distinct, day + 1),
                     _item_rows(state.items, state.items.ahead(day, i, ratings), day + 1), history)


def _grow_history(state: RollingState) -> None:
    missing = len(state.users.ids) - len(state.recent)
    state.recent.grow(missing)
    state.seen.grow(missing)
    state.distinct = np.r_[state.distinct, np.zeros(missing, np.int64)]


def _lists_after(state: RollingState, u: np.ndarray, items: np.ndarray, cap: int):
    """(the codes of the users active, their recent and their seen items after these events)."""
    order = np.argsort(u, kind="stable")  # per user: (timestamp, item) order, as the events are sorted
    u_sorted, items_sorted = u[order], items[order]
    cuts = np.flatnonzero(np.diff(u_sorted)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(u_sorted)]
    active = u_sorted[starts] if len(u_sorted) else np.zeros(0, np.int64)
    recent, seen = [], []
    for code, lo, hi in zip(active, starts, ends):
        today = items_sorted[lo:hi]
        recent.append(np.r_[state.recent[code], today][-cap:])
        seen.append(np.union1d(state.seen[code], today))
    return active, recent, seen


def _add(state: RollingState, day: int, u: np.ndarray, i: np.ndarray, items: np.ndarray, ratings: np.ndarray,
         cap: int) -> pd.DataFrame:
    """Count one day's events; the ``user_history`` rows they make (stamped the next day; none without events)."""
    state.users.add_day(day, u, ratings)
    state.items.add_day(day, i, ratings)
    active, recent, seen = _lists_after(state, u, items, cap)
    for code, r, s in zip(active, recent, seen):
        state.recent[code], state.seen[code] = r, s
        state.distinct[code] = len(s)
    return _history_of(state, active, recent, seen, day + 1)


def _history_of(state: RollingState, active: np.ndarray, recent: list, seen: list, stamp: int) -> pd.DataFrame:
    by_id = np.argsort(state.users.ids[active], kind="stable")
    return history_frame(state.users.ids[active[by_id]], [recent[k] for k in by_id], [seen[k] for k in by_id], stamp)


def history_frame(user_ids: np.ndarray, recent: list[np.ndarray], seen: list[np.ndarray], stamp: int) -> pd.DataFrame:
    """``user_history`` rows of one stamp."""
    return pd.DataFrame({
        "user_id": np.asarray(user_ids, np.int64),
        "user_recent_items": [r.tolist() for r in recent],
        "user_seen_items": [s.tolist() for s in seen],
        TS: pd.Series(stamp_of(stamp), index=range(len(user_ids))).astype("datetime64[ns, UTC]"),
    })


def _user_rows(state: RollingState, t: Totals, distinct: np.ndarray, stamp: int) -> pd.DataFrame:
    cols = {
        "user_n_interactions": t.n, "user_interactions_7d": t.last_7d, "user_interactions_30d": t.last_30d,
        "user_distinct_items": distinct, "user_mean_rating": t.mean_rating(),
        "user_days_since_last": np.where(t.last_day >= 0, stamp - t.last_day, NEVER),
    }
    return state.users.rows(stamp, "user_id", {c: cols[c] for c in USER_STATS})


def _item_rows(it: EntityState, t: Totals, stamp: int) -> pd.DataFrame:
    c30 = t.last_30d
    alive = it.first_day <= stamp
    ordered = np.sort(c30[alive])
    since = stamp - it.first_day
    cols = {
        "item_n_interactions": t.n, "item_interactions_7d": t.last_7d, "item_interactions_30d": c30,
        "item_popularity_rank": len(ordered) - np.searchsorted(ordered, c30, side="right") + 1,  # ties share
        "item_days_since_first": np.where(since > 0, since, NEVER), "item_mean_rating": t.mean_rating(),
    }
    return it.rows(stamp, "item_id", {c: cols[c] for c in ITEM_STATS})
