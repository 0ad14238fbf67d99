"""The drift signals: what each one observes, when it can be tested, and its statistic.

Each ``Signal`` names a unit (who or what is permuted), a method (the statistic) and
whether it is categorical; ``distance`` is that statistic on batches of weighted
histograms. Why these signals, and how their methods read: docs/drift.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys_retrain.settings import DriftSettings

REQUIRED_COLUMNS = (
    "user_id", "item_id", "timestamp", "rating", "user_age", "item_genres", "item_release_year",
)
CALENDAR_COVERAGE = 0.9
"""A window must span this share of a calendar cycle for the cycle's signal to be tested."""
PSI_EPS = 1e-4
"""Empty PSI buckets count as this share (Evidently's default)."""
METHODS = ("jensenshannon", "psi", "wasserstein")
"""Methods a histogram signal may be given in ``DriftSettings.methods``."""


@dataclass(frozen=True)
class Signal:
    """How one signal is observed and tested.

    ``unit`` is "interaction", "user" or "genre" for histogram signals, "item" for the
    signals recomputed from the reference in every permutation, "target" for the one
    tested on its own pair of equally long target windows (new users).
    """

    name: str
    unit: str
    method: str
    categorical: bool
    cycle: pd.Timedelta | None = None  # calendar signals: span a window must cover

    @property
    def relative(self) -> bool:
        return self.unit == "item"


SIGNALS: tuple[Signal, ...] = (
    Signal("rating", "interaction", "wasserstein", False),
    Signal("item_popularity_decile", "item", "jensenshannon", True),
    Signal("top_items_share", "item", "share_gap", True),
    Signal("new_item_share", "item", "share", True),
    Signal("rising_item_share", "item", "share", True),
    Signal("new_user_share", "target", "share", True),
    Signal("hour_of_day", "interaction", "jensenshannon", True, pd.Timedelta(days=1)),
    Signal("day_of_week", "interaction", "jensenshannon", True, pd.Timedelta(days=7)),
    Signal("item_release_year", "interaction", "wasserstein", False),
    Signal("user_activity", "user", "wasserstein", False),
    Signal("session_pace", "interaction", "wasserstein", False),
    Signal("user_age", "user", "wasserstein", False),
    Signal("genre", "genre", "jensenshannon", True),
)
NEWCOMER_SIGNALS = {"new_user_share": "user_id"}
"""Signals tested on equally long target windows (see ``recsys_retrain.drift.observations``), and the column each follows."""
SCORE_SIGNAL = Signal("prediction_score", "interaction", "wasserstein", False)


@dataclass
class Observed:
    """One signal's observations: a (units x bins) weighted count matrix.

    Relative signals keep a sparse (units x keys) matrix of weighted rows per item (or
    user id) instead; their bins are derived from the reference side per permutation.
    """

    counts: Any  # np.ndarray (units x bins) or, for relative signals, sp.csr_matrix (units x keys)
    support: np.ndarray  # bin values (numeric) or labels (categorical)
    users: tuple[int, int]  # users with an observation on each side
    note: str = ""
    pooled_sd: float = 0.0
    n_ref_units: int = 0  # rows [0, n_ref_units) of counts are the reference's units
    raw: Any = None  # relative signals: unweighted row counts, same shape as counts


def configured(signal: Signal, settings: DriftSettings) -> Signal:
    """``signal`` with the method ``settings.methods`` gives it; refuses a method its bins or order cannot take."""
    method = settings.methods.get(signal.name, signal.method)
    fixed = signal.relative or signal.method not in METHODS
    if fixed and method != signal.method:
        raise ValueError(f"drift method for {signal.name} is fixed ({signal.method}): its bins come from the reference")
    if not fixed and method not in METHODS:
        raise ValueError(f"drift method for {signal.name} must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "wasserstein" and signal.categorical:
        raise ValueError(f"{signal.name} is categorical: wasserstein needs an ordered signal")
    return Signal(signal.name, signal.unit, method, signal.categorical, signal.cycle)


def untested_reason(signal: Signal, obs: Observed, reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> str:
    """Why a signal cannot be tested meaningfully, or "" when it can."""
    for side_name, n in zip(("reference", "current"), obs.users):
        if n == 0:
            return f"no {signal.name} values in the {side_name} window"
    for side_name, n in zip(("reference", "current"), obs.users):
        if n < settings.min_users:
            return f"{side_name} window has {n} user(s) with {signal.name} values, under min_users {settings.min_users}"
    if signal.cycle is not None:
        need = signal.cycle * CALENDAR_COVERAGE
        for side_name, window in (("reference", reference), ("current", current)):
            span = window["timestamp"].max() - window["timestamp"].min()
            if span < need:
                return f"{side_name} window spans {span}, under {CALENDAR_COVERAGE:.0%} of a {signal.cycle} cycle"
    return ""


def distance(signal: Signal, obs: Observed | None, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Distance per row of the (B x K) weighted histograms ``ref`` and ``cur``; 0 when a side is empty."""
    rs, cs = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    ok = (rs[:, 0] > 0) & (cs[:, 0] > 0)
    p = np.divide(ref, rs, out=np.zeros_like(ref), where=rs > 0)
    q = np.divide(cur, cs, out=np.zeros_like(cur), where=cs > 0)
    if signal.method == "share":  # one-sided: the current window's first-bin share above the reference's
        return np.where(ok, q[:, 0] - p[:, 0], 0.0)
    if signal.method == "jensenshannon":
        m = (p + q) / 2
        kl = _xlogy(p, p, m) + _xlogy(q, q, m)
        d = np.sqrt(np.maximum(kl.sum(axis=1) / 2, 0.0))
    elif signal.method == "psi":
        pe, qe = np.where(p > 0, p, PSI_EPS), np.where(q > 0, q, PSI_EPS)
        d = ((pe - qe) * np.log(pe / qe)).sum(axis=1)
    else:
        x = np.asarray(obs.support, float)
        if len(x) < 2 or obs.pooled_sd <= 0:
            return np.zeros(len(p))
        gap = np.abs(np.cumsum(p, axis=1)[:, :-1] - np.cumsum(q, axis=1)[:, :-1]) @ np.diff(x)
        d = gap / obs.pooled_sd
    return np.where(ok, d, 0.0)


def _xlogy(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(a[pos] / b[pos])
    return out
