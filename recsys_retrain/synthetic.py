"""A realistic synthetic interaction log at any size, with its drift ground truth.

``simulate`` resamples MovieLens-100K, so its logs can never be larger or more varied
than MovieLens; this module generates a log from a small generative model instead, so
the pipeline can be run at 10^5 to 10^9 events with known structure:

* **items** have a heavy-tailed base weight (Zipf over a random rank), an arrival day
  (most exist before the log starts, ``item_new_share`` arrive during it) and an
  ageing curve (popularity decays with age to a floor), so what is watched *now*
  differs from what was watched overall, as in real catalogues;
* **users** have a heavy-tailed event budget (a quantile curve with a Pareto tail), an
  arrival day and a lifetime: their sessions fall after arrival, most of them soon
  after (a user rates in bursts), spread over the week (``weekday``) and the day
  (``hour``) by fixed rhythms;
* **tastes**: every item belongs to one of ``clusters`` latent clusters (its genres
  follow the cluster); every user has a Dirichlet taste over the clusters, correlated
  with their gender and age group. An event follows the user's taste with probability
  ``taste_share`` (cluster by taste, then item by current popularity within it) and
  global popularity otherwise, so ``P(item | user, day)`` is known in closed form:
  personalisation is learnable and has a known optimum (the latent parameters are
  saved in ``latent.npz``);
* **scheduled drifts** (:class:`Drift`): ``taste_shift`` (a share of users draw a new
  taste), ``popularity_shift`` (tail items become head items), ``new_item_influx``
  (items arrive with head weight) and ``activity_drop`` (a share of sessions
  disappears), each from a day on; what happened is written to ``truth.json``.

Generation is in two passes with bounded memory: sessions first (12 bytes per session,
about 1.5 bytes per event), then events day by day, appended to one parquet file in
weekly row groups; never the whole log in memory. The event schema is what
``recsys_retrain.data.load`` reads: ``user_id``, ``item_id`` (int64), ``timestamp``
(UTC), ``rating`` (float64), with ``users.parquet`` and ``items.parquet`` beside it
(``load_synthetic`` returns a ``RawData``). Summary statistics that a fit to a real log
must match are in ``recsys_retrain.synthetic_fit``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_retrain.data.load import GENRES, RawData

DAY_S = 86_400
DRIFT_KINDS = ("taste_shift", "popularity_shift", "new_item_influx", "activity_drop")
OCCUPATIONS = (
    "administrator artist doctor educator engineer entertainment executive healthcare homemaker lawyer librarian "
    "marketing none other programmer retired salesman scientist student technician writer"
).split()
AGE_GROUPS = ((7, 17), (18, 24), (25, 34), (35, 44), (45, 49), (50, 55), (56, 73))
RATING_P = np.array([0.06, 0.11, 0.27, 0.34, 0.22])  # MovieLens-100K's share of 1..5 stars
ROW_GROUP_DAYS = 7
ACTIVITY_KNOTS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)  # the quantiles of SyntheticConfig.activity_quantiles


@dataclass(frozen=True)
class Drift:
    """One scheduled drift: ``kind`` (one of ``DRIFT_KINDS``) from ``day`` on, of size ``share``.

    ``share``: taste_shift, the share of users whose taste is redrawn; popularity_shift and
    new_item_influx, the share of the catalogue concerned (tail items promoted to head
    weight, or new items arriving that day with head weight); activity_drop, the share of
    sessions dropped from that day on.
    """

    kind: str
    day: int
    share: float

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"drift kind must be one of {DRIFT_KINDS}, got {self.kind!r}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"drift share must be within (0, 1], got {self.share}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and generative parameters; the defaults are the fit to MovieLens-100K (``MOVIELENS_FIT``)."""

    n_events: int = 100_000
    n_users: int = 943
    n_items: int = 1_682
    days: int = 215
    start: str = "1997-09-20"
    seed: int = 0
    clusters: int = 24
    taste_concentration: float = 0.15  # Dirichlet mass per cluster: small -> concentrated tastes
    taste_share: float = 0.6  # share of choices that follow the user's taste (the rest: global popularity)
    popularity_exponent: float = 0.88  # Zipf exponent of an item's base weight over its rank
    item_new_share: float = 0.12  # items that arrive during the log (the rest exist before it)
    ageing_days: float = 45.0  # e-folding time of an item's popularity after arrival
    ageing_floor: float = 0.35  # what is left of it when old
    # events per user relative to the mean, at quantiles 0, 0.1, 0.25, 0.5, 0.75, 0.9, and a Pareto tail above
    activity_quantiles: tuple[float, ...] = (0.1886, 0.2169, 0.3112, 0.613, 1.3956, 2.3047)
    activity_tail: float = 3.59  # Pareto index of the top 10 % (smaller: heavier)
    user_new_share: float = 0.9  # users that arrive during the log
    user_lifetime_days: float = 25.0  # mean spread of a user's sessions after arrival
    session_mean: float = 12.0  # mean events per session
    gap_s: float = 40.0  # mean seconds between events of a session
    drifts: tuple[Drift, ...] = field(default=())

    def __post_init__(self) -> None:
        if min(self.n_events, self.n_users, self.n_items, self.days) < 1:
            raise ValueError("n_events, n_users, n_items and days must be positive")
        if len(self.activity_quantiles) != len(ACTIVITY_KNOTS) or min(self.activity_quantiles) <= 0:
            raise ValueError(f"activity_quantiles: {len(ACTIVITY_KNOTS)} positive values (quantiles {ACTIVITY_KNOTS})")
        if len({d.day for d in self.drifts}) < len(self.drifts):
            raise ValueError("at most one drift per day")
        if not 0.0 <= self.taste_share <= 1.0:
            raise ValueError(f"taste_share must be within [0, 1], got {self.taste_share}")
        for d in self.drifts:
            if not 0 <= d.day < self.days:
                raise ValueError(f"drift {d.kind} on day {d.day} is outside the {self.days}-day log")

    def to_dict(self) -> dict:
        return {**asdict(self), "drifts": [asdict(d) for d in self.drifts]}


MOVIELENS_FIT = SyntheticConfig()
"""MovieLens-100K's size and span with the parameters fit to it (``recsys_retrain.synthetic_fit``)."""

SIZES = {
    "ml100k": MOVIELENS_FIT,
    "S1": replace(MOVIELENS_FIT, n_events=100_000, n_users=1_000, n_items=1_700, days=364),
    "S2": replace(MOVIELENS_FIT, n_events=1_000_000, n_users=20_000, n_items=10_000, days=364),
    "S3": replace(MOVIELENS_FIT, n_events=10_000_000, n_users=200_000, n_items=50_000, days=364),
}
"""Named sizes: MovieLens-100K's, and the scale benchmark's S1-S3 (one year each)."""


def default_drifts(days: int) -> tuple[Drift, ...]:
    """One drift of each kind, spread over the second half of a ``days``-day log."""
    at = [int(days * f) for f in (0.5, 0.6, 0.7, 0.8)]
    return (Drift("taste_shift", at[0], 0.3), Drift("popularity_shift", at[1], 0.01),
            Drift("new_item_influx", at[2], 0.01), Drift("activity_drop", at[3], 0.3))


@dataclass(frozen=True)
class SyntheticLog:
    """Where :func:`synthesize` wrote a log, and what it took."""

    folder: Path
    events: int
    seconds: float

    @property
    def interactions(self) -> Path:
        return self.folder / "interactions.parquet"

    @property
    def truth(self) -> dict:
        return json.loads((self.folder / "truth.json").read_text())


# --------------------------------------------------------------------------- the latent world


@dataclass
class _World:
    """Items, users and tastes: everything the day-by-day pass reads."""

    item_cluster: np.ndarray  # [N] int
    item_weight: np.ndarray  # [N] base weight (Zipf)
    item_arrival: np.ndarray  # [N] day (negative: before the log)
    theta_cum: np.ndarray  # [U, K] cumulative taste
    user_group: np.ndarray  # [U] demographic group
    flagged: dict  # drift day -> (indices, weight) of the items a popularity shift or an influx moves then


def _items(c: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = c.n_items
    weight = (1.0 + rng.permutation(n)) ** -c.popularity_exponent
    arrival = -rng.exponential(3 * 365, n)  # the catalogue's back list
    new = rng.random(n) < c.item_new_share
    arrival[new] = rng.uniform(0, c.days, int(new.sum()))
    cluster = rng.integers(0, c.clusters, n)
    return cluster, weight, arrival


def _tastes(c: SyntheticConfig, group: np.ndarray, rng: np.random.Generator, n_groups: int) -> np.ndarray:
    """``[U, K]`` tastes: Dirichlet around the user's demographic group's preference."""
    base = rng.dirichlet(np.ones(c.clusters), n_groups)
    shape = c.taste_concentration * c.clusters * (0.5 * base[group] + 0.5 / c.clusters)
    theta = rng.gamma(shape) + 1e-12
    return theta / theta.sum(axis=1, keepdims=True)


def _world(c: SyntheticConfig, rng: np.random.Generator) -> tuple[_World, pd.DataFrame, pd.DataFrame]:
    cluster, weight, arrival = _items(c, rng)
    flagged = {}
    for d in c.drifts:
        k = max(1, int(round(d.share * c.n_items)))
        head = np.quantile(weight, 0.995)
        if d.kind == "popularity_shift":
            tail = np.flatnonzero((weight < np.median(weight)) & (arrival < d.day))
            chosen = rng.choice(tail, min(k, len(tail)), replace=False)
        elif d.kind == "new_item_influx":
            chosen = rng.choice(c.n_items, k, replace=False)
            arrival[chosen] = d.day
        else:
            continue
        flagged[d.day] = (chosen, head)  # from d.day on, these items weigh as much as the head
    gender = np.where(rng.random(c.n_users) < 0.71, "M", "F")
    age_group = rng.choice(len(AGE_GROUPS), c.n_users, p=[0.06, 0.19, 0.36, 0.2, 0.08, 0.06, 0.05])
    lo, hi = np.array(AGE_GROUPS).T
    age = rng.integers(lo[age_group], hi[age_group] + 1)
    group = age_group * 2 + (gender == "F")
    theta = _tastes(c, group, rng, 2 * len(AGE_GROUPS))
    users = pd.DataFrame({"user_id": np.arange(1, c.n_users + 1, dtype=np.int64), "age": age.astype(np.int64),
                          "gender": gender, "occupation": np.asarray(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), c.n_users)]})
    genres = [g for g in GENRES if g != "unknown"]
    primary, secondary = rng.permutation(np.arange(c.clusters) % len(genres)), rng.integers(0, len(genres), c.clusters)
    two = rng.random(c.clusters) < 0.5
    names = [genres[p] + (f"|{genres[s]}" if t and s != p else "") for p, s, t in zip(primary, secondary, two)]
    start_year = pd.Timestamp(c.start).year
    year = np.floor(start_year + np.minimum(arrival, 0) / 365 + arrival.clip(min=0) / 365).astype(np.int64)
    items = pd.DataFrame({"item_id": np.arange(1, c.n_items + 1, dtype=np.int64),
                          "genres": np.asarray(names)[cluster], "release_year": year})
    world = _World(cluster, weight, arrival, np.cumsum(theta, axis=1), group, flagged)
    return world, users, items


# --------------------------------------------------------------------------- pass 1: sessions


def _budgets(c: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Events per user from the activity quantile curve and its Pareto tail, scaled to ``n_events`` in total.

    Users take stratified quantile levels (one per 1/n_users slot), so the quantiles of the
    budgets are the curve's at any number of users, not a sample's.
    """
    u = (rng.permutation(c.n_users) + rng.random(c.n_users)) / c.n_users
    top = ACTIVITY_KNOTS[-1]
    relative = np.exp(np.interp(u, ACTIVITY_KNOTS, np.log(c.activity_quantiles)))
    tail = u > top
    relative[tail] = c.activity_quantiles[-1] * ((1 - top) / (1 - u[tail])) ** (1 / c.activity_tail)
    wanted = relative * c.n_events / relative.sum()
    budget = np.floor(wanted).astype(np.int64)
    budget += rng.random(c.n_users) < wanted - budget
    return np.maximum(budget, 1)


def _sessions(c: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, day, second, length)`` of every session, sorted by day and second."""
    budget = _budgets(c, rng)
    n_sessions = np.maximum(1, np.round(budget / c.session_mean)).astype(np.int64)
    n_sessions = np.minimum(n_sessions, budget)
    user = np.repeat(np.arange(c.n_users, dtype=np.int32), n_sessions)
    # split each budget into its sessions: multinomial via sorted uniform cut points
    share = rng.exponential(1.0, len(user))
    first = np.cumsum(n_sessions) - n_sessions
    total = np.add.reduceat(share, first)
    length = 1 + np.floor(share / np.repeat(total, n_sessions) * np.repeat(budget - n_sessions, n_sessions)).astype(np.int64)
    short = budget - np.add.reduceat(length, first)  # what flooring lost goes to each user's first session
    length[first] += short
    arrival = np.where(rng.random(c.n_users) < c.user_new_share, rng.uniform(0, c.days, c.n_users), 0.0)
    life = rng.exponential(c.user_lifetime_days, c.n_users) + 1.0
    span = c.days - arrival
    r = rng.random(len(user))
    lu, su = life[user], span[user]
    offset = -lu * np.log1p(-r * (1 - np.exp(-su / lu)))  # exponential truncated to the rest of the log
    day = np.minimum(arrival[user] + offset, c.days - 1e-9)
    day = _weekly(day.astype(np.int64), c, rng)
    keep = np.ones(len(user), bool)
    for d in c.drifts:
        if d.kind == "activity_drop":
            keep &= ~((day >= d.day) & (rng.random(len(user)) < d.share))
    user, day, length = user[keep], day[keep], length[keep]
    duration = (length * c.gap_s * 3).clip(max=DAY_S // 2)
    hour = rng.choice(24, len(user), p=_HOURS)
    second = np.minimum(hour * 3600 + rng.integers(0, 3600, len(user)), DAY_S - 1 - duration).astype(np.int64)
    order = np.lexsort((second, day))
    return user[order], day[order].astype(np.int32), second[order], length[order]


_HOURS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 6, 7, 8, 9, 9, 8, 6, 4], dtype=float)
_HOURS /= _HOURS.sum()
_WEEKDAY = np.array([0.85, 0.8, 0.8, 0.85, 0.95, 1.0, 1.0])  # Monday..Sunday


def _weekly(day: np.ndarray, c: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Move a share of sessions off quiet weekdays to a neighbouring day, so weekends are busier."""
    weekday = (day + pd.Timestamp(c.start).dayofweek) % 7
    move = rng.random(len(day)) > _WEEKDAY[weekday]
    day = day.copy()
    day[move] = np.clip(day[move] + rng.choice([-1, 1], int(move.sum())), 0, c.days - 1)
    return day


# --------------------------------------------------------------------------- pass 2: events, day by day


def _popularity(w: _World, c: SyntheticConfig, day: int) -> np.ndarray:
    """Each item's weight on ``day``: base weight x ageing since arrival (0 before it)."""
    age = day - w.item_arrival
    curve = c.ageing_floor + (1 - c.ageing_floor) * np.exp(-np.clip(age, 0, None) / c.ageing_days)
    weight = w.item_weight.copy()
    for at, (chosen, head) in w.flagged.items():
        if day >= at:
            weight[chosen] = head
    return np.where(age >= 0, weight * curve, 0.0)


class _Chooser:
    """Draws items for one day's events: by the user's taste cluster, or by global popularity."""

    def __init__(self, w: _World, c: SyntheticConfig) -> None:
        self.w, self.c = w, c
        self.order = np.argsort(w.item_cluster, kind="stable")  # items grouped by cluster
        self.bounds = np.searchsorted(w.item_cluster[self.order], np.arange(c.clusters + 1))

    def choose(self, user: np.ndarray, day: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(item index, followed taste)`` for each event of ``user`` on ``day``."""
        pop = _popularity(self.w, self.c, day)[self.order]
        cum = np.cumsum(pop)
        before = np.concatenate([[0.0], cum])[self.bounds]  # cumulative weight before each cluster
        mass = np.diff(before)
        by_taste = rng.random(len(user)) < self.c.taste_share
        cluster = (self.w.theta_cum[user] < rng.random((len(user), 1))).sum(axis=1).clip(max=self.c.clusters - 1)
        empty = mass[cluster] <= 0
        by_taste &= ~empty
        lo = np.where(by_taste, before[cluster], 0.0)
        width = np.where(by_taste, mass[cluster], cum[-1])
        target = lo + rng.random(len(user)) * width
        pos = np.searchsorted(cum, target, side="right").clip(max=len(cum) - 1)
        return self.order[pos], by_taste


def _shift_tastes(w: _World, c: SyntheticConfig, share: float, rng: np.random.Generator) -> np.ndarray:
    """Redraw the taste of a ``share`` of users; returns their indices."""
    who = np.flatnonzero(rng.random(c.n_users) < share)
    theta = _tastes(c, w.user_group[who], rng, 2 * len(AGE_GROUPS))
    w.theta_cum[who] = np.cumsum(theta, axis=1)
    return who


SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.timestamp("ns", tz="UTC")),
                    ("rating", pa.float64())])


def synthesize(config: SyntheticConfig, out: Path | str) -> SyntheticLog:
    """Generate a log into ``out``: interactions/users/items parquet, ``truth.json`` and ``latent.npz``.

    Memory: the session table (12 bytes a session) and one week of events; never the
    whole log. Same config and seed, same files.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> log = synthesize(replace(SIZES["S1"], drifts=default_drifts(364)), tmp / "s1")
        >>> load_synthetic(log.folder).interactions.columns.tolist(), log.truth["drifts"][0]["kind"]
        (['user_id', 'item_id', 'timestamp', 'rating'], 'taste_shift')
        >>> import shutil
        >>> shutil.rmtree(tmp)
    """
    began = time.perf_counter()
    c = config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(c.seed)
    world, users, items = _world(c, rng)
    users.to_parquet(out / "users.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    s_user, s_day, s_second, s_length = _sessions(c, np.random.default_rng([c.seed, 1]))
    day_bounds = np.searchsorted(s_day, np.arange(c.days + 1))
    chooser = _Chooser(world, c)
    origin = pd.Timestamp(c.start, tz="UTC").value
    truth = {"config": c.to_dict(), "drifts": []}
    drift_at = {d.day: d for d in c.drifts}
    flagged = world.flagged
    rng = np.random.default_rng([c.seed, 2])
    written, buffer, counts = 0, [], {name: 0 for name in flagged}
    with pq.ParquetWriter(out / "interactions.parquet.tmp", SCHEMA) as writer:
        for day in range(c.days):
            drift = drift_at.get(day)
            if drift is not None:
                truth["drifts"].append(_truth(drift, c, world, flagged, rng))
            lo, hi = day_bounds[day], day_bounds[day + 1]
            if hi > lo:
                frame = _day_events(c, chooser, day, s_user[lo:hi], s_second[lo:hi], s_length[lo:hi], origin, rng)
                for at, (chosen, _) in flagged.items():
                    counts[at] += int(np.isin(frame["item_id"].to_numpy(), chosen + 1).sum()) if day >= at else 0
                buffer.append(frame)
            if buffer and ((day + 1) % ROW_GROUP_DAYS == 0 or day == c.days - 1):
                table = pa.Table.from_pandas(pd.concat(buffer, ignore_index=True), schema=SCHEMA, preserve_index=False)
                writer.write_table(table)
                written += table.num_rows
                buffer = []
    (out / "interactions.parquet.tmp").replace(out / "interactions.parquet")
    for event in truth["drifts"]:
        if event["day"] in counts:
            event["events_on_items_after"] = counts[event["day"]]
    truth["events"] = written
    np.savez_compressed(out / "latent.npz", item_cluster=world.item_cluster, item_weight=world.item_weight,
                        item_arrival=world.item_arrival, theta_cum=world.theta_cum.astype(np.float32))
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    return SyntheticLog(out, written, time.perf_counter() - began)


def _day_events(c, chooser: _Chooser, day: int, user, second, length, origin: int, rng) -> pd.DataFrame:
    n = int(length.sum())
    starts = np.cumsum(length) - length
    gaps = 1 + np.floor(rng.exponential(c.gap_s, n)).astype(np.int64)
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[starts], length)  # 0 for a session's first event, then increasing
    u = np.repeat(user, length)
    ts = (day * DAY_S + np.repeat(second, length) + offset).clip(max=(day + 1) * DAY_S - 1)
    item, tasteful = chooser.choose(u, day, rng)
    stars = rng.choice(5, n, p=RATING_P) + 1
    stars = np.minimum(stars + (tasteful & (rng.random(n) < 0.3)), 5)  # what suits a taste rates a little higher
    frame = pd.DataFrame({"user_id": u.astype(np.int64) + 1, "item_id": item.astype(np.int64) + 1,
                          "timestamp": pd.to_datetime(origin + ts * 10**9, utc=True), "rating": stars.astype(np.float64)})
    frame = frame.drop_duplicates(["user_id", "item_id", "timestamp"])
    return frame.sort_values(["timestamp", "user_id"], kind="stable", ignore_index=True)


def _truth(d: Drift, c: SyntheticConfig, w: _World, flagged: dict, rng: np.random.Generator) -> dict:
    start = (pd.Timestamp(c.start, tz="UTC") + pd.Timedelta(days=d.day)).isoformat()
    event = {"kind": d.kind, "day": d.day, "start": start, "share": d.share}
    if d.kind == "taste_shift":
        event["users"] = int(len(_shift_tastes(w, c, d.share, rng)))
    elif d.day in flagged:
        event["items"] = (flagged[d.day][0] + 1).tolist()
    return event


def load_synthetic(folder: Path | str) -> RawData:
    """A folder written by :func:`synthesize` as ``RawData`` (interactions with side tables)."""
    from recsys_retrain.data.load import load_interactions, normalise_items, normalise_users

    folder = Path(folder)
    return RawData(load_interactions(folder / "interactions.parquet"),
                   normalise_users(pd.read_parquet(folder / "users.parquet"), "users.parquet"),
                   normalise_items(pd.read_parquet(folder / "items.parquet"), "items.parquet"))


def parse_size(spec: str) -> SyntheticConfig:
    """``synthetic:S2`` / ``S2`` / ``ml100k`` or ``EVENTS,USERS,ITEMS[,DAYS]`` -> a config with default drifts."""
    name = spec.split(":", 1)[1] if spec.startswith("synthetic:") else spec
    if name in SIZES:
        base = SIZES[name]
    else:
        try:
            parts = [int(x) for x in name.split(",")]
        except ValueError:
            raise ValueError(f"unknown synthetic size {name!r}: one of {', '.join(SIZES)} or EVENTS,USERS,ITEMS[,DAYS]") from None
        if len(parts) not in (3, 4):
            raise ValueError(f"synthetic size {name!r}: give EVENTS,USERS,ITEMS[,DAYS]")
        base = replace(MOVIELENS_FIT, n_events=parts[0], n_users=parts[1], n_items=parts[2],
                       days=parts[3] if len(parts) == 4 else 364)
    return replace(base, drifts=default_drifts(base.days))
