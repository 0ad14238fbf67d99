"""How small a gain the gate can see: the minimum detectable NDCG difference, and pooled windows.

The gate compares two models on the same holdout users, so its evidence is the list
of per-user differences ``challenger - champion``. How small a true mean gain that
evidence can resolve depends only on how many users there are and how much the
differences scatter: a week of MovieLens-100K holds 40 to 130 users, and per-user
NDCG@10 differences scatter by about 0.1, so a week cannot tell a gain of +0.01 from
luck. Without that number a "not promoted" reads as "not better" when it often means
"could not tell"; so every decision logs its minimum detectable difference (MDE).

When the newest window is underpowered, :func:`evidence` pools the paired
differences of earlier windows in which the same champion was judged against a
challenger of the same recipe: each window still pairs the two models on the same
users, and the pooled list is what the bootstrap and the policy then judge.

Pure functions of arrays; the cycle (:mod:`recsys_retrain.gating`) reads earlier
windows' per-user scores from their cycle folders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def minimum_detectable_difference(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided test at level ``alpha`` detects with probability ``power``.

    ``(t[1 - alpha/2] + t[power]) * sd / sqrt(n)`` with Student-t quantiles on ``n - 1``
    degrees of freedom (scipy.stats): the textbook normal-approximation formula, with
    the t quantiles that keep it honest for the 40-user weeks the gate sees. For large
    ``n`` it tends to the familiar ``2.80 * sd / sqrt(n)`` at alpha 0.05 and power 0.8.

    Args:
        n: paired observations (users scored by both models).
        sd: standard deviation of the paired differences (``ddof=1``).
        alpha: two-sided level; the gate uses ``1 - confidence`` of its interval.
        power: probability of detecting a true difference of the returned size.

    Returns:
        The MDE in the units of the metric; ``inf`` below two users or for a non-finite ``sd``.

    Example:
        >>> round(minimum_detectable_difference(100, 0.1), 4)
        0.0283
        >>> minimum_detectable_difference(1, 0.1)
        inf
    """
    from scipy import stats

    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    if n < 2 or not math.isfinite(sd):
        return math.inf
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedScores:
    """One window's per-user metric of both models, on the same users in the same order."""

    challenger: np.ndarray
    champion: np.ndarray
    window: str | None = None

    def __post_init__(self) -> None:
        if len(self.challenger) != len(self.champion):
            raise ValueError(f"paired scores need the same users: {len(self.challenger)} vs {len(self.champion)}")

    @property
    def n_users(self) -> int:
        return len(self.challenger)

    @property
    def differences(self) -> np.ndarray:
        return np.asarray(self.challenger, np.float64) - np.asarray(self.champion, np.float64)


@dataclass(frozen=True)
class Power:
    """What a body of paired evidence can resolve: its size, scatter and MDE."""

    n_users: int
    sd: float
    mde: float
    alpha: float
    power: float


def power_of(scores: PairedScores, alpha: float, power: float) -> Power:
    """The MDE of ``scores``' paired differences, with the numbers behind it.

    Example:
        >>> p = power_of(PairedScores(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.1, 0.4, 0.5, 0.8])), 0.05, 0.8)
        >>> p.n_users, round(p.sd, 4), round(p.mde, 4)
        (4, 0.0577, 0.1201)
    """
    diff = scores.differences
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else math.nan
    return Power(len(diff), sd, minimum_detectable_difference(len(diff), sd, alpha, power), alpha, power)


def pool(windows: Sequence[PairedScores]) -> PairedScores:
    """The windows' paired scores as one list of users (a user active in two windows counts twice).

    Example:
        >>> pool([PairedScores(np.array([0.5]), np.array([0.4]), "w2"), PairedScores(np.array([0.3]), np.array([0.3]), "w1")])
        PairedScores(challenger=array([0.5, 0.3]), champion=array([0.4, 0.3]), window='w2+w1')
    """
    if not windows:
        raise ValueError("pool needs at least one window")
    return PairedScores(
        np.concatenate([np.asarray(w.challenger, np.float64) for w in windows]),
        np.concatenate([np.asarray(w.champion, np.float64) for w in windows]),
        "+".join(w.window or "?" for w in windows),
    )


def evidence(
    newest: PairedScores,
    earlier: Sequence[PairedScores],
    *,
    max_windows: int,
    pool_above: float,
    alpha: float,
    power: float,
) -> tuple[PairedScores, ...]:
    """The windows a decision rests on, newest first.

    The newest window alone while its MDE is at most ``pool_above``; otherwise earlier
    windows (``earlier``, newest first) are added one at a time until the pooled MDE
    drops to ``pool_above`` or ``max_windows`` windows are in. Adding no more than
    needed keeps the evidence as fresh as the noise allows.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> week = lambda: PairedScores(rng.normal(0.3, 0.1, 50), rng.normal(0.3, 0.1, 50))
        >>> len(evidence(week(), [week(), week(), week()], max_windows=3, pool_above=0.035, alpha=0.05, power=0.8))
        3
    """
    chosen = [newest]
    for window in earlier:
        if len(chosen) >= max_windows or power_of(pool(chosen), alpha, power).mde <= pool_above:
            break
        chosen.append(window)
    return tuple(chosen)
