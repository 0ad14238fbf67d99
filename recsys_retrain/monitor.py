"""Auto-revert: the champion against the version it replaced, on each fresh window.

After a promotion, every new window scores the ``champion`` and the ``previous``
version on the same users, so drift that hurts every model (a holiday week, a
catalogue change) does not look like a regression: only the *paired* difference
counts. A window is "worse" when the champion's mean NDCG@K deficit is at least
``threshold`` and the upper bound of the paired bootstrap interval of
``champion - previous`` is below zero. The champion is reverted after
``consecutive`` worse windows in a row (hysteresis), never on one noisy window.

:func:`compare_window` and :func:`decide_revert` are pure; :func:`check_window`
is what the ``champion_monitor`` DAG task calls: it scores both versions, records
the window on the champion's model version (``monitor.<window end>`` tags, one per
window, so a re-run overwrites rather than double-counts) and reverts through
:func:`recsys_retrain.registry.promotion.revert`, which tags the reverted version with its reason.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from recsys_retrain.evaluate import UserEval, user_metrics
from recsys_retrain.gate import paired_bootstrap
from recsys_retrain.io import utc
from recsys_retrain.settings import MonitorSettings, Settings

logger = logging.getLogger(__name__)
TAG_PREFIX = "monitor."


@dataclass(frozen=True)
class WindowCheck:
    """Champion vs previous on one window: the paired difference and whether it counts as worse."""

    window: str
    champion_version: int
    previous_version: int
    champion_ndcg: float
    previous_ndcg: float
    mean_delta: float
    ci_low: float
    ci_high: float
    n_users: int
    threshold: float
    worse: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowCheck:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RevertDecision:
    """Whether to roll the champion back, with the windows that decided it."""

    revert: bool
    champion_version: int | None
    previous_version: int | None
    consecutive: int
    required: int
    reason: str
    windows: tuple[WindowCheck, ...] = ()
    reverted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "windows": [w.to_dict() for w in self.windows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RevertDecision:
        return cls(**{**d, "windows": tuple(WindowCheck.from_dict(w) for w in d.get("windows", ()))})


def compare_window(
    champion: UserEval,
    previous: UserEval,
    settings: MonitorSettings,
    *,
    window: str,
    champion_version: int,
    previous_version: int,
) -> WindowCheck:
    """Paired bootstrap of champion - previous NDCG@K on one window's users."""
    s = settings
    if len(champion.user_ids) != len(previous.user_ids) or (champion.user_ids != previous.user_ids).any():
        raise ValueError("champion and previous were scored on different users; the monitor needs the same window")
    iv = paired_bootstrap(champion.ndcg, previous.ndcg, s.n_resamples, s.seed, s.confidence)
    finite = math.isfinite(iv.mean)
    worse = finite and iv.mean <= -s.threshold and iv.high < 0
    verdict = "worse" if worse else "not worse"
    reason = (
        f"window {window}: champion v{champion_version} - previous v{previous_version} NDCG@{champion.k} "
        f"{iv.mean:+.4f}, {s.confidence:.0%} CI [{iv.low:+.4f}, {iv.high:+.4f}] on {champion.n_users} users: "
        f"{verdict} (worse needs mean <= -{s.threshold:.4f} and upper bound < 0)"
    )
    return WindowCheck(
        window, champion_version, previous_version, champion.mean_ndcg, previous.mean_ndcg,
        iv.mean, iv.low, iv.high, champion.n_users, s.threshold, worse, reason,
    )


def decide_revert(checks: list[WindowCheck], settings: MonitorSettings) -> RevertDecision:
    """Revert after ``consecutive`` worse windows in a row for the current champion/previous pair.

    Only checks of the pair named by the latest check count, in window order; a
    window that is not worse resets the count.
    """
    if not checks:
        return RevertDecision(False, None, None, 0, settings.consecutive, "no window checked yet")
    ordered = sorted(checks, key=lambda c: pd.Timestamp(c.window.split("/")[-1]))
    last = ordered[-1]
    pair = [c for c in ordered if (c.champion_version, c.previous_version) == (last.champion_version, last.previous_version)]
    run = 0
    for c in reversed(pair):
        if not c.worse:
            break
        run += 1
    revert = run >= settings.consecutive
    streak = tuple(pair[len(pair) - run:]) if run else (last,)
    if revert:
        reason = (
            f"champion v{last.champion_version} worse than previous v{last.previous_version} on {run} consecutive "
            f"windows (needs {settings.consecutive}): " + " | ".join(c.reason for c in streak)
        )
    else:
        reason = f"{run} consecutive worse window(s), {settings.consecutive} needed to revert; last: {last.reason}"
    return RevertDecision(revert, last.champion_version, last.previous_version, run, settings.consecutive, reason, streak)


def _window_key(window: str) -> str:
    end = utc(window.split("/")[-1])
    return TAG_PREFIX + end.strftime("%Y%m%dT%H%M%S")


def recorded_checks(settings: Settings, version: int) -> list[WindowCheck]:
    """The windows already checked while ``version`` was champion (from its version tags)."""
    from recsys_retrain.registry.client import connect, model_version

    tags = model_version(connect(settings), settings.model_name, version).tags
    return [WindowCheck.from_dict(json.loads(v)) for k, v in tags.items() if k.startswith(TAG_PREFIX)]


def check_window(settings: Settings, history: pd.DataFrame, window_df: pd.DataFrame, window: str) -> RevertDecision:
    """Scores champion and previous on one fresh window; reverts after enough worse windows.

    Idempotent per window: the window's result is stored under one tag on the
    champion's version, and a window that already caused a revert is not judged again.

    Args:
        settings: the pipeline settings (monitor thresholds, registry, K).
        history: interactions before the window (excluded from ranking, defines cold users).
        window_df: the window's interactions (same columns as ``recsys_retrain.data.store.pull_window``).
        window: ``start/end`` ISO timestamps of the window.

    Returns:
        The RevertDecision; ``reverted`` is True when this call moved the aliases.
    """
    from recsys_retrain.registry import aliases, candidates, promotion
    from recsys_retrain.registry.client import connect

    s, m = settings, settings.monitor
    for move in reversed(aliases.history(s)):
        if move.alias == aliases.CHAMPION and move.evidence == f"window {window}" and "revert" in move.reason:
            return RevertDecision(
                False, move.to_version, None, 0, m.consecutive,
                f"window {window} already reverted v{move.from_version} -> v{move.to_version}; nothing to do",
            )
    champ, prev = candidates.alias(s, aliases.CHAMPION), candidates.alias(s, aliases.PREVIOUS)
    if champ is None or prev is None:
        return RevertDecision(
            False, champ.version if champ else None, None, 0, m.consecutive,
            "no champion and previous pair to compare",
        )
    scores = []
    for cand in (champ, prev):
        model, error = candidates.try_load(s, cand.version)
        if model is None:
            return RevertDecision(
                False, champ.version, prev.version, 0, m.consecutive, f"v{cand.version} cannot be loaded: {error}"
            )
        scores.append(user_metrics(model, history, window_df, s.eval.k, s.gate.head_share))
    check = compare_window(scores[0], scores[1], m, window=window, champion_version=champ.version,
                           previous_version=prev.version)
    client = connect(s)
    client.set_model_version_tag(s.model_name, str(champ.version), _window_key(window), json.dumps(check.to_dict()))
    decision = decide_revert(recorded_checks(s, champ.version), m)
    logger.info("monitor %s: %s", window, decision.reason)
    if not decision.revert:
        return decision
    moved = promotion.revert(s, reason=decision.reason, actor="monitor", window=window,
                             expected_champion=champ.version)
    return RevertDecision(**{**decision.__dict__, "reverted": bool(moved)})
