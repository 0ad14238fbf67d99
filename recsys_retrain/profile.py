"""DataProfile: the shape of a window of interactions, stored with every run.

Sparsity, popularity skew and churn of users and items decide how hard a window is
to learn from; the scheduler calibrates on these numbers and the report plots them.

Definitions (``n`` interactions, ``U`` users, ``I`` items in the window):
- density: n / (U * I) (distinct user-item pairs would never exceed it).
- gini: Gini coefficient of interactions per item over the window's items (0 even, ->1 skewed).
- top1_share / top20_share: share of interactions on the most popular 1% / 20% of the
  window's items (at least one item each).
- long_tail_share: share of the window's items outside the head, the fewest most
  popular items that together hold 80% of the interactions.
- new_user_rate / new_item_rate: share of the window's users / items that never
  appear in the reference window (None without a reference).
- user_activity: quantiles of interactions per user.
- interactions_per_day: n over the window's length in days ([start, end) when given,
  otherwise first to last event's day, inclusive).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.io import utc

QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99)
HEAD_SHARE = 0.8


@dataclass(frozen=True)
class DataProfile:
    """Summary statistics of one window of interactions (see the module docstring)."""

    start: str | None
    end: str | None
    interactions: int
    users: int
    items: int
    density: float
    gini: float
    top1_share: float
    top20_share: float
    long_tail_share: float
    new_user_rate: float | None
    new_item_rate: float | None
    rating_mean: float
    rating_std: float
    interactions_per_day: float
    user_activity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataProfile:
        return cls(**{**d, "user_activity": {str(k): float(v) for k, v in d.get("user_activity", {}).items()}})


def profile(
    window: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> DataProfile:
    """Profile ``window`` (user_id, item_id, timestamp[, rating]) against ``reference``.

    Example:
        >>> w = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [7, 8, 7],
        ...     "timestamp": pd.to_datetime(["2024-03-01", "2024-03-01", "2024-03-02"], utc=True), "rating": 4.0})
        >>> p = profile(w)
        >>> (p.users, p.items, p.interactions, round(p.density, 3), p.interactions_per_day)
        (2, 2, 3, 0.75, 1.5)
    """
    n = len(window)
    t0, t1 = _ts(start), _ts(end)
    if n == 0:
        return DataProfile(
            _iso(t0), _iso(t1), 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, 0.0, 0.0, 0.0,
            {f"p{round(q * 100)}": 0.0 for q in QUANTILES},
        )
    users = window["user_id"].to_numpy()
    items = window["item_id"].to_numpy()
    u_ids, per_user = np.unique(users, return_counts=True)
    i_ids, per_item = np.unique(items, return_counts=True)
    pop = np.sort(per_item)[::-1].astype(np.float64)  # most popular first
    cum = np.cumsum(pop) / n
    head = int(np.searchsorted(cum, HEAD_SHARE - 1e-12) + 1)
    ratings = window["rating"].to_numpy(dtype=np.float64) if "rating" in window else np.ones(n)
    if t0 is not None and t1 is not None:
        days = max((t1 - t0) / pd.Timedelta(days=1), 1e-9)
    else:
        stamps = pd.to_datetime(window["timestamp"], utc=True)
        days = float((stamps.max().floor("D") - stamps.min().floor("D")).days + 1)
    new_u = new_i = None
    if reference is not None:
        new_u = float(np.mean(~np.isin(u_ids, reference["user_id"].to_numpy())))
        new_i = float(np.mean(~np.isin(i_ids, reference["item_id"].to_numpy())))
    return DataProfile(
        start=_iso(t0),
        end=_iso(t1),
        interactions=n,
        users=len(u_ids),
        items=len(i_ids),
        density=n / (len(u_ids) * len(i_ids)),
        gini=_gini(per_item),
        top1_share=float(pop[: _top(len(pop), 0.01)].sum() / n),
        top20_share=float(pop[: _top(len(pop), 0.20)].sum() / n),
        long_tail_share=float((len(pop) - head) / len(pop)),
        new_user_rate=new_u,
        new_item_rate=new_i,
        rating_mean=float(ratings.mean()),
        rating_std=float(ratings.std()),
        interactions_per_day=float(n / days),
        user_activity={f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, np.quantile(per_user, QUANTILES))},
    )


def profile_window(repo: Path, t0: datetime | str, t1: datetime | str, reference_days: int = 7) -> DataProfile:
    """Profile the stored events of [t0, t1) against the ``reference_days`` before t0."""
    from recsys_retrain.data.store import read_events

    lo, hi = _ts(t0), _ts(t1)
    window = read_events(repo, lo, hi)
    reference = read_events(repo, lo - pd.Timedelta(days=reference_days), lo)
    return profile(window, reference, lo, hi)


def _gini(counts: np.ndarray) -> float:
    """Gini of non-negative counts (0 when all equal)."""
    x = np.sort(counts.astype(np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _top(n: int, share: float) -> int:
    return max(1, int(np.ceil(n * share)))


def _ts(value) -> pd.Timestamp | None:
    return None if value is None else utc(value)


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.isoformat()
