"""Summary statistics a synthetic log must share with the real one it imitates.

A synthetic log is only a stand-in for a real one if the properties that decide what
the pipeline does match: how concentrated item popularity is (the popularity Gini:
what a most-popular baseline gets), how activity is spread over users (the per-user
event-count quantiles: how much history a user tower sees), and how much better the
recent popularity predicts next week than the all-time one (``recent_advantage``: why
the model has a time-aware prior and why retraining pays). :func:`summary_stats`
computes them on any interaction frame and :func:`relative_gaps` compares two; the
parameters of ``recsys_retrain.synthetic.MOVIELENS_FIT`` were chosen so the gaps to
MovieLens-100K stay within 10 % (``tests/test_synthetic.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
TOP_K = 20  # the popularity list whose next-week hits recent_advantage counts
RECENT_DAYS = 28
WARMUP_WEEKS = 8  # weekly cut-offs start this long after the log's start


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal, towards 1: one item takes all).

    Example:
        >>> round(gini(np.array([1, 1, 1, 1])), 3), round(gini(np.array([0, 0, 0, 4])), 3)
        (0.0, 0.75)
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def recent_advantage(inter: pd.DataFrame, k: int = TOP_K, recent_days: int = RECENT_DAYS) -> float:
    """How much more of next week the recent top-k catches than the all-time top-k (ratio of hits).

    At every weekly cut-off T (from ``WARMUP_WEEKS`` after the start to a week before
    the end): the share of the events of ``[T, T + 7 days)`` whose item is among the k
    most-consumed items of ``[T - recent_days, T)``, over the share for the k
    most-consumed items before T; pooled over the cut-offs (hits summed, then divided).
    """
    ts = inter["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    items, codes = np.unique(inter["item_id"].to_numpy(), return_inverse=True)
    order = np.argsort(ts, kind="stable")
    ts, codes = ts[order], codes[order]
    week, day = 7 * 86_400 * 10**9, 86_400 * 10**9
    cut, end = ts[0] + WARMUP_WEEKS * week, ts[-1] - week
    recent_hits = alltime_hits = 0
    while cut <= end:
        before = np.searchsorted(ts, cut)
        start_recent, next_end = np.searchsorted(ts, cut - recent_days * day), np.searchsorted(ts, cut + week)
        nxt = np.bincount(codes[before:next_end], minlength=len(items))
        for lo, name in ((start_recent, "recent"), (0, "alltime")):
            top = np.argsort(-np.bincount(codes[lo:before], minlength=len(items)), kind="stable")[:k]
            hits = int(nxt[top].sum())
            if name == "recent":
                recent_hits += hits
            else:
                alltime_hits += hits
        cut += week
    return recent_hits / alltime_hits if alltime_hits else float("nan")


def summary_stats(inter: pd.DataFrame) -> dict[str, float]:
    """Popularity Gini, per-user activity quantiles and the recent-popularity advantage of a log.

    Args:
        inter: interactions with ``user_id``, ``item_id``, ``timestamp``.

    Returns:
        ``{"popularity_gini", "activity_q10" ... "activity_q90", "recent_advantage"}``.
    """
    per_item = inter["item_id"].value_counts().to_numpy()
    per_user = inter["user_id"].value_counts().to_numpy()
    out = {"popularity_gini": gini(per_item)}
    out.update({f"activity_q{int(q * 100)}": float(np.quantile(per_user, q)) for q in QUANTILES})
    out["recent_advantage"] = recent_advantage(inter)
    return out


def fit_activity(per_user: np.ndarray) -> tuple[tuple[float, ...], float]:
    """``(activity_quantiles, activity_tail)`` of a log's events per user, for ``SyntheticConfig``.

    The quantiles at ``synthetic.ACTIVITY_KNOTS`` relative to the mean, and the Pareto
    index of the users above the top knot, from their mean: for a Pareto tail from
    ``x_m``, ``mean = a x_m / (a - 1)``, so ``a = mean / (mean - x_m)``.

    Example:
        >>> quantiles, tail = fit_activity(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20]))
        >>> quantiles[0], tail  # the least active user has 1/7 of the mean; the top one twice its quantile
        (0.1467, 2.0)
    """
    from recsys_retrain.synthetic import ACTIVITY_KNOTS

    x = np.asarray(per_user, dtype=np.float64)
    levels = np.quantile(x, ACTIVITY_KNOTS)
    above = x[x > levels[-1]]
    tail = float(above.mean() / (above.mean() - levels[-1])) if len(above) else 10.0
    return tuple(round(float(v), 4) for v in levels / x.mean()), round(tail, 2)


def relative_gaps(synthetic: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """``|synthetic - real| / |real|`` per statistic of ``real``."""
    return {name: abs(synthetic[name] - value) / abs(value) for name, value in real.items()}
