"""The promotion gate: per-user metrics, a paired bootstrap, guardrails, one decision.

Two models are judged on the same holdout users, so their per-user NDCG@K values
are paired: the gate resamples users (with replacement, seeded) and looks at the
distribution of the mean difference, which removes the between-user noise that
makes single-number gates promote lucky models. A challenger is promoted only when

* its artifact loads and its metrics are finite, and its mean NDCG@K clears an
  absolute floor (``min_ndcg``);
* the paired gain passes the decision policy (``gate.policy``, see
  :mod:`recsys_retrain.gate_policies`); the default, non-inferiority, asks for a mean
  gain of at least ``min_delta`` and a lower bound of the bootstrap interval of at
  least ``-tolerance``. Every decision records the minimum detectable difference of
  the users it rests on (:mod:`recsys_retrain.power`), and an underpowered window may
  pool earlier windows judged against the same champion;
* no guardrail breaks: Recall@K, catalogue coverage of the top-K lists, and the
  NDCG@K of cold users and of long-tail items each drop by no more than their own
  tolerance;
* it was not reverted before, unless the evidence comes from a later window.

Everything here is a pure function of arrays and settings; the registry adapter
(:mod:`recsys_retrain.registry.promotion`) records the decision and moves the aliases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys_retrain.evaluate import UserEval
from recsys_retrain.gate_policies import Check, Evidence, margin, policy_checks
from recsys_retrain.io import utc
from recsys_retrain.power import PairedScores, evidence, pool, power_of
from recsys_retrain.records import json_float, lenient_from_dict
from recsys_retrain.settings import GateSettings


@dataclass(frozen=True)
class Interval:
    """Mean of a paired difference and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int, confidence: float) -> Interval:
    """Percentile interval of ``mean(a - b)`` over users resampled with replacement.

    Example:
        >>> iv = paired_bootstrap(np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.5, 0.6]), 1000, 0, 0.95)
        >>> round(iv.mean, 6), round(iv.low, 6), round(iv.high, 6)
        (0.1, 0.1, 0.1)
    """
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(diff) == 0:
        return Interval(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // len(diff))  # bounded memory for large holdouts
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(diff.mean()), float(low), float(high))


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger replaces the champion, with every number that decided it.

    The first eight fields are the skeleton's scalar decision and keep their meaning;
    the rest are filled by the significance gate (:func:`decide`). ``reason`` is one
    line: the failed checks, or a summary of the passed ones.

    The power fields say how much the evidence could resolve: ``mde`` is the minimum
    detectable difference of the ``evidence_users`` paired scores the interval rests
    on (over ``evidence_windows``, newest first), ``window_mde`` that of the newest
    window alone, ``sd_delta`` the scatter of the paired differences. A "not promoted"
    with a gain below ``mde`` means "could not tell", not "not better".
    """

    metric: str
    challenger_value: float
    champion_value: float | None
    min_delta: float
    promote: bool
    reason: str
    challenger_version: int | None = None
    champion_version: int | None = None
    window: str | None = None
    mean_delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    tolerance: float | None = None
    confidence: float | None = None
    n_resamples: int | None = None
    seed: int | None = None
    n_users: int | None = None
    checks: tuple[Check, ...] = ()
    policy: str | None = None
    margin: float | None = None
    power: float | None = None
    sd_delta: float | None = None
    mde: float | None = None
    window_mde: float | None = None
    evidence_users: int | None = None
    evidence_windows: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        d["evidence_windows"] = list(self.evidence_windows)
        return d

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> GateDecision:
        payload = {**payload, "checks": tuple(Check.from_dict(c) for c in payload.get("checks", ())),
                   "evidence_windows": tuple(payload.get("evidence_windows", ()))}
        return lenient_from_dict(cls, payload)


def window_end(window: str | None) -> pd.Timestamp | None:
    """The end of a ``start/end`` window as a UTC timestamp; None for no window.

    Whether evidence is newer than a revert compares these ends, here and when the
    registry applies a decision (:func:`recsys_retrain.registry.promotion.apply_decision`).

    Example:
        >>> window_end("2024-01-01T00:00:00+00:00/2024-01-08T00:00:00+00:00")
        Timestamp('2024-01-08 00:00:00+0000', tz='UTC')
    """
    if not window:
        return None
    return utc(window.split("/")[-1])


def decide(
    challenger: UserEval | None,
    champion: UserEval | None,
    settings: GateSettings,
    *,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    window: str | None = None,
    load_error: str | None = None,
    champion_error: str | None = None,
    reverted_on: str | None = None,
    earlier: Sequence[PairedScores] = (),
) -> GateDecision:
    """The significance gate on two models' per-user metrics from the same holdout.

    The paired gain's interval and its minimum detectable difference are judged by
    the policy ``settings.policy`` (:mod:`recsys_retrain.gate_policies`); the floor and
    the guardrails (on the newest window) hold under every policy.

    Args:
        challenger: per-user metrics of the candidate; None when it could not be scored.
        champion: the current champion's on the same holdout; None when there is none.
        window: ``start/end`` of the holdout, the evidence this decision rests on.
        load_error: why the challenger's artifact could not be loaded, if it could not.
        champion_error: why the champion's artifact could not be loaded. With ``champion``
            given (the ``previous`` version standing in) the reason names it; without one
            the challenger is rejected: an unvetted model never passes on the floor alone.
        reverted_on: the window on which the challenger was reverted before, if it was;
            it may return only on evidence from a window that ends later.
        earlier: paired per-user scores of earlier windows, newest first, in which the
            same champion was judged against a challenger of the same recipe. Pooled
            with this window while its MDE is above ``pool_above_mde``, up to
            ``pool_windows`` windows in all (:func:`recsys_retrain.power.evidence`).

    Returns:
        A GateDecision whose ``checks`` list every rule, passed or not.
    """
    s = settings
    base = dict(
        metric=s.metric,
        min_delta=s.min_delta,
        challenger_version=challenger_version,
        champion_version=champion_version,
        window=window,
        tolerance=s.tolerance,
        confidence=s.confidence,
        n_resamples=s.n_resamples,
        seed=s.seed,
        policy=s.policy,
        power=s.power,
    )
    checks: list[Check] = []
    value = challenger.mean_ndcg if challenger is not None else math.nan
    champ_value = champion.mean_ndcg if champion is not None else None

    def done(promote: bool, summary: str, **numbers: Any) -> GateDecision:
        failed = [c.detail for c in checks if not c.passed]
        reason = "; ".join(failed) if failed else summary
        if champion_error is not None and champion is not None:
            reason = f"{champion_error}, so judged against v{champion_version}: {reason}"
        return GateDecision(
            challenger_value=float(value), champion_value=champ_value, promote=promote and not failed,
            reason=reason, checks=tuple(checks), n_users=challenger.n_users if challenger else 0, **base, **numbers,
        )

    if load_error is not None or challenger is None:
        checks.append(Check("loadable", False, None, None, f"challenger artifact cannot be loaded: {load_error}"))
        return done(False, "")
    if reverted_on is not None:
        end, reverted_end = window_end(window), window_end(reverted_on)
        fresh = end is not None and reverted_end is not None and end > reverted_end
        checks.append(Check(
            "not_reverted", fresh, None, None,
            f"was reverted on window {reverted_on}; evidence from window {window} is "
            + ("newer" if fresh else "not newer, so it cannot return"),
        ))
    finite = challenger.n_users > 0 and math.isfinite(value)
    checks.append(Check("finite", finite, value, None, f"challenger {s.metric} is {value} on {challenger.n_users} users"))
    if not finite:
        return done(False, "")
    checks.append(Check(
        "floor", value >= s.min_ndcg, value, s.min_ndcg,
        f"challenger {s.metric} {value:.4f} {'>=' if value >= s.min_ndcg else '<'} floor {s.min_ndcg:.4f}",
    ))
    if champion is None:
        if champion_error is not None:
            checks.append(Check("comparable", False, None, None, f"champion v{champion_version} cannot be loaded "
                                f"({champion_error}) and nothing stands in for it: the champion stays"))
            return done(False, "")
        return done(True, f"no champion yet: challenger {s.metric} {value:.4f} clears the floor {s.min_ndcg:.4f}")
    if not np.array_equal(challenger.user_ids, champion.user_ids):
        raise ValueError("challenger and champion were scored on different holdout users; the gate needs the same holdout")
    newest = PairedScores(challenger.ndcg, champion.ndcg, window)
    alpha = 1.0 - s.confidence
    windows = evidence(newest, earlier, max_windows=s.pool_windows, pool_above=s.pool_above_mde, alpha=alpha,
                       power=s.power)
    pooled = pool(windows)
    iv = paired_bootstrap(pooled.challenger, pooled.champion, s.n_resamples, s.seed, s.confidence)
    pw = power_of(pooled, alpha, s.power)
    e = Evidence(iv.mean, iv.low, iv.high, pw.n_users, pw.sd, pw.mde, len(windows))
    checks.extend(policy_checks(e, s))
    checks.extend(guardrails(challenger, champion, s))
    numbers = dict(
        mean_delta=iv.mean, ci_low=iv.low, ci_high=iv.high, sd_delta=json_float(pw.sd), mde=json_float(pw.mde),
        window_mde=json_float(power_of(newest, alpha, s.power).mde if len(windows) > 1 else pw.mde),
        margin=None if s.policy == "superiority" else json_float(margin(e, s)), evidence_users=pw.n_users,
        evidence_windows=tuple(w.window or "" for w in windows),
    )
    pct = f"{s.confidence:.0%}"
    pooled_note = f" over {len(windows)} windows ({pw.n_users} users)" if len(windows) > 1 else ""
    return done(
        True,
        f"{s.metric} {value:.4f} vs {champ_value:.4f}: gain {iv.mean:+.4f}, {pct} CI [{iv.low:+.4f}, {iv.high:+.4f}]"
        f"{pooled_note}, MDE {pw.mde:.4f}; {s.policy}; all guardrails hold",
        **numbers,
    )


def guardrails(challenger: UserEval, champion: UserEval, s: GateSettings) -> list[Check]:
    """Recall, coverage, cold-user and long-tail NDCG: each may drop by at most its tolerance."""
    checks = []

    def drop_check(name: str, new: float, old: float, tolerance: float, label: str) -> Check:
        delta = new - old
        ok = math.isfinite(delta) and delta >= -tolerance
        op = ">=" if ok else "<"
        return Check(name, ok, delta, -tolerance, f"{label} change {delta:+.4f} ({old:.4f} -> {new:.4f}) {op} -{tolerance:.4f}")

    k = challenger.k
    checks.append(drop_check("recall", float(challenger.recall.mean()), float(champion.recall.mean()),
                             s.recall_tolerance, f"Recall@{k}"))
    checks.append(drop_check("coverage", challenger.coverage, champion.coverage, s.coverage_tolerance,
                             f"coverage@{k}"))
    cold = challenger.is_cold
    tail = ~np.isnan(challenger.longtail_ndcg) & ~np.isnan(champion.longtail_ndcg)
    for name, mask, new, old, tol, label in (
        ("cold_users", cold, challenger.ndcg, champion.ndcg, s.cold_tolerance, f"cold-user NDCG@{k}"),
        ("long_tail", tail, challenger.longtail_ndcg, champion.longtail_ndcg, s.longtail_tolerance,
         f"long-tail NDCG@{k}"),
    ):
        n = int(mask.sum())
        if n < s.min_segment_users:
            checks.append(Check(name, True, None, -tol, f"{label}: {n} users < {s.min_segment_users}, not checked"))
        else:
            checks.append(drop_check(name, float(new[mask].mean()), float(old[mask].mean()), tol,
                                     f"{label} ({n} users)"))
    return checks
