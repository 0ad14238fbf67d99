"""The gate's decision rules: when does a paired NDCG@K gain, with its interval and its noise, promote?

Each policy turns the :class:`Evidence` (the mean paired gain, its bootstrap
interval, and the minimum detectable difference of the users at hand) into the
checks that decide; the gate (:func:`recsys_retrain.gate.decide`) adds the floor
and the guardrails, which hold under every policy. ``gate.policy`` chooses one:

* ``non_inferiority`` (the default, the gate's rule so far): promotes when the mean
  gain is at least ``min_delta`` and the lower bound of the interval is above
  ``-margin``. Safe, but on a 40-user week the interval is so wide that only large
  gains pass: real gains of +0.004 to +0.022 were blocked in a replay.
* ``superiority``: promotes only when the interval lies above zero (and the mean
  gain is at least ``min_delta``): the challenger is shown better. Strictest.
* ``fresher_unless_worse``: promotes the fresher model unless it is shown worse
  (the interval lies below zero) or its mean falls by more than the margin. Bets
  that a model trained on newer data serves the next weeks better, and pays for
  that bet with at most ``margin`` of mean NDCG@K.

The margin is ``tolerance``, or, with ``margin_mde_fraction`` set, that fraction of
the evidence's MDE (capped by ``max_margin``): a margin that follows the noise, so
that a small holdout neither blocks every gain nor excuses any drop. Every policy
rejects a challenger that is clearly worse beyond the noise.

``bench/backtest.py`` chose the default, ``non_inferiority``: on a timeline with known
drifts ``fresher_unless_worse`` let stale retrains through, and ``superiority`` kept
fewer fresh models; on MovieLens-100K the three serve within the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from recsys_retrain.records import lenient_from_dict
from recsys_retrain.settings import GateSettings


@dataclass(frozen=True)
class Check:
    """One rule of the gate: the value it looked at, the threshold, and the verdict."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Check:
        return lenient_from_dict(cls, payload)


@dataclass(frozen=True)
class Evidence:
    """What a policy judges: the mean paired gain, its interval, and what the users at hand can resolve.

    ``n_users`` counts paired scores over ``windows`` windows (a pooled body of
    evidence may count a user once per window); ``mde`` is the minimum detectable
    difference of those paired differences (:mod:`recsys_retrain.power`).
    """

    mean: float
    low: float
    high: float
    n_users: int
    sd: float
    mde: float
    windows: int = 1


def margin(e: Evidence, s: GateSettings) -> float:
    """The non-inferiority margin: ``tolerance``, or ``margin_mde_fraction`` x MDE capped by ``max_margin``.

    Example:
        >>> e = Evidence(0.0, -0.02, 0.02, 80, 0.1, 0.04)
        >>> margin(e, GateSettings()), margin(e, GateSettings(margin_mde_fraction=0.5))
        (0.005, 0.02)
    """
    if s.margin_mde_fraction is None:
        return s.tolerance
    derived = s.margin_mde_fraction * e.mde
    return min(derived, s.max_margin) if math.isfinite(derived) else s.max_margin


def margin_label(e: Evidence, s: GateSettings) -> str:
    """How the margin reads in a check's detail: ``-tolerance -0.0050`` or ``-margin -0.0200 (0.5 x MDE 0.0400)``."""
    m = margin(e, s)
    if s.margin_mde_fraction is None:
        return f"-tolerance {-m:.4f}"
    capped = ", capped" if m == s.max_margin else ""
    return f"-margin {-m:.4f} ({s.margin_mde_fraction:g} x MDE {e.mde:.4f}{capped})"


def sample_label(e: Evidence, s: GateSettings) -> str:
    where = f" in {e.windows} windows" if e.windows > 1 else ""
    return f"({s.n_resamples} paired resamples of {e.n_users} users{where})"


def mean_gain(e: Evidence, s: GateSettings) -> Check:
    ok = e.mean >= s.min_delta
    return Check("mean_gain", ok, e.mean, s.min_delta,
                 f"mean {s.metric} gain {e.mean:+.4f} {'>=' if ok else '<'} min_delta {s.min_delta:.4f}")


def non_inferiority(e: Evidence, s: GateSettings) -> list[Check]:
    """Promotes when the mean gain is at least ``min_delta`` and the lower bound is above ``-margin``."""
    m = margin(e, s)
    ok = e.low >= -m
    return [
        mean_gain(e, s),
        Check("non_inferior", ok, e.low, -m, f"{s.confidence:.0%} lower bound of the gain {e.low:+.4f} "
              f"{'>=' if ok else '<'} {margin_label(e, s)} {sample_label(e, s)}"),
    ]


def superiority(e: Evidence, s: GateSettings) -> list[Check]:
    """Promotes only when the whole interval lies above zero and the mean gain is at least ``min_delta``."""
    ok = e.low > 0
    return [
        mean_gain(e, s),
        Check("superior", ok, e.low, 0.0, f"{s.confidence:.0%} lower bound of the gain {e.low:+.4f} "
              f"{'>' if ok else '<='} 0 {sample_label(e, s)}"),
    ]


def fresher_unless_worse(e: Evidence, s: GateSettings) -> list[Check]:
    """Promotes unless the interval lies below zero or the mean gain falls below ``-margin``."""
    m = margin(e, s)
    not_worse, within = e.high >= 0, e.mean >= -m
    return [
        Check("not_worse", not_worse, e.high, 0.0, f"{s.confidence:.0%} upper bound of the gain {e.high:+.4f} "
              f"{'>=' if not_worse else '<'} 0 {sample_label(e, s)}"
              + ("" if not_worse else ": significantly worse")),
        Check("within_margin", within, e.mean, -m,
              f"mean {s.metric} gain {e.mean:+.4f} {'>=' if within else '<'} {margin_label(e, s)}"),
    ]


POLICIES: dict[str, Callable[[Evidence, GateSettings], list[Check]]] = {
    "non_inferiority": non_inferiority,
    "superiority": superiority,
    "fresher_unless_worse": fresher_unless_worse,
}


def policy_checks(e: Evidence, s: GateSettings) -> list[Check]:
    """The checks of the policy ``s.policy`` on ``e``; the challenger passes when all pass.

    Example:
        >>> e = Evidence(mean=0.01, low=-0.02, high=0.04, n_users=60, sd=0.1, mde=0.036)
        >>> [c.passed for c in policy_checks(e, GateSettings(policy="fresher_unless_worse"))]
        [True, True]
        >>> [c.passed for c in policy_checks(e, GateSettings(policy="superiority"))]
        [True, False]
    """
    return POLICIES[s.policy](e, s)
