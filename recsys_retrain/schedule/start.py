"""Warm start or from scratch: where a run begins, from the drift verdict, the profile and the champion.

The calibrated schedule adjustment: small drift on a stable catalogue, a short warm
update of the champion (``recsys_retrain.train.warm_start``): a lower rate, a few
epochs, the recent days only. Large drift or a changed catalogue, a full retrain. Every
condition that rules the warm start out is one reason of the decision, with its
value and threshold, and ``StartDecision.apply`` records the outcome in the plan.

Off by default (``ScheduleSettings.warm_start``): in ``bench/backtest.py`` warm starts
served no better than from-scratch runs beyond the noise, for more training seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import ScheduleSettings, TrainSettings

SEVERITY_LEVEL = {"none": 0.0, "minor": 0.5, "major": 1.0}  # as calibrate weighs drift


@dataclass(frozen=True)
class ChampionInfo:
    """What the decision needs to know of the champion, measured against the new data.

    Attributes:
        new_user_share: share of the new span's users the champion has no row for.
        new_item_share: share of the current catalogue's items the champion has no row for.
        removed_item_share: share of the champion's items no longer in the catalogue.
        embedding_dim: width of the champion's tables (a warm start cannot resize them).
        days_unseen: days of data after the end of the champion's training data (None: unknown).
        version: the champion's registry version, for the reasons.
    """

    new_user_share: float
    new_item_share: float
    removed_item_share: float
    embedding_dim: int
    days_unseen: float | None = None
    version: str | None = None

    @classmethod
    def compare(
        cls,
        champion_users: Iterable,
        champion_items: Iterable,
        users: Iterable,
        items: Iterable,
        embedding_dim: int,
        days_unseen: float | None = None,
        version: str | None = None,
    ) -> ChampionInfo:
        """The shares from the champion's ids (its encoder's) and the new span's users and catalogue.

        Example:
            >>> info = ChampionInfo.compare([1, 2, 3], [10, 11], [2, 3, 4, 5], [10, 11, 12, 13], embedding_dim=32)
            >>> info.new_user_share, info.new_item_share, info.removed_item_share
            (0.5, 0.5, 0.0)
        """
        old_users, old_items, new_users, new_items = set(champion_users), set(champion_items), set(users), set(items)
        return cls(
            new_user_share=len(new_users - old_users) / max(len(new_users), 1),
            new_item_share=len(new_items - old_items) / max(len(new_items), 1),
            removed_item_share=len(old_items - new_items) / max(len(old_items), 1),
            embedding_dim=embedding_dim,
            days_unseen=days_unseen,
            version=version,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChampionInfo:
        return cls(**d)


@dataclass(frozen=True)
class StartDecision:
    """Warm start from the champion or train from scratch, with the reasons.

    Attributes:
        warm: continue from the champion's weights.
        rate_scale: the plan's starting rates are multiplied by this (1 from scratch).
        epochs: the warm update's epoch budget (None: the plan's).
        history_days: days of the most recent history to train on (None: all of it).
        reasons: one sentence per rule that decided, with its value and threshold.
    """

    warm: bool
    rate_scale: float = 1.0
    epochs: int | None = None
    history_days: float | None = None
    reasons: tuple[str, ...] = ()

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)

    def apply(self, plan: SchedulePlan) -> SchedulePlan:
        """The plan with this decision in it, each changed field with its reason.

        From scratch only records why (``warm_start`` False). A warm start scales both
        rates, sets the epoch budget (and lowers ``min_epochs`` to it), drops the rate
        probe, whose extra passes would cost more than the update, and sets ``history_days``.
        """
        plan = plan.with_reason("warm_start", self.warm, self.why)
        if not self.warm:
            return plan
        why = f"warm start: x{self.rate_scale:g} of the calibrated rate"
        plan = plan.with_reason("dense_lr", plan.dense_lr * self.rate_scale, f"{why} ({plan.dense_lr:g})")
        plan = plan.with_reason("sparse_lr", plan.sparse_lr * self.rate_scale, f"{why} ({plan.sparse_lr:g})")
        if self.epochs is not None:
            plan = plan.with_reason("max_epochs", self.epochs, f"warm start: a short update of {self.epochs} epochs")
            plan = plan.with_reason("min_epochs", min(plan.min_epochs, self.epochs), "warm start: within its budget")
        plan = plan.with_reason("probe_rates", (), "warm start: the champion's rates are known; no rate probe")
        span = self.reasons[-1] if self.reasons else "the span it was given"
        return plan.with_reason("history_days", self.history_days, f"warm start: {span}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StartDecision:
        return cls(**{**d, "reasons": tuple(d.get("reasons", ()))})


def warm_or_scratch(
    drift: dict[str, Any] | None,
    profile: dict[str, Any],
    champion: ChampionInfo | None,
    settings: ScheduleSettings | None = None,
    train: TrainSettings | None = None,
) -> StartDecision:
    """Whether the next run continues from the champion, and its rate, epochs and data span if so.

    From scratch when warm starts are off, without a champion or a drift verdict, under
    major drift, when the champion's tables are another width, or when the share of
    users or items the champion has no row for passes its threshold (items removed
    from the catalogue count as changed too). Otherwise a warm start: the rates
    ``warm_rate_scale`` of the plan's and ``warm_epochs`` epochs, both raised by
    ``1 + drift level`` (minor drift: x1.5), over the last ``warm_span_days`` days, or
    every day the champion has not seen when that is longer, or the whole window
    when the window is shorter.

    Args:
        drift: the drift step's result (``severity``, ``drifted_share``); None: no verdict.
        profile: ``DataProfile.to_dict()`` of the training data (its span sizes the update).
        champion: the champion measured against the new data (``ChampionInfo.compare``); None: no champion.
        settings: the schedule section (``warm_*`` thresholds and budgets).
        train: the train section (this run's embedding width and epoch cap).

    Returns:
        The decision and its reasons.

    Example:
        >>> info = ChampionInfo(new_user_share=0.02, new_item_share=0.0, removed_item_share=0.0, embedding_dim=32)
        >>> on = ScheduleSettings(warm_start=True)
        >>> warm_or_scratch({"severity": "none", "drifted_share": 0.0}, {}, info, on).warm
        True
        >>> warm_or_scratch({"severity": "major", "drifted_share": 0.6}, {}, info, on).why
        'drift major (share 0.60): the champion learnt tastes that changed; retrain from scratch'
    """
    s, t = settings or ScheduleSettings(), train or TrainSettings()
    against = scratch_reasons(drift, champion, s, t)
    if against:
        return StartDecision(warm=False, reasons=tuple(against))
    severity = drift["severity"]
    share = float(drift.get("drifted_share") or 0.0)
    level = max(SEVERITY_LEVEL.get(severity, 0.0), min(2 * share, 1.0))
    scale = min(s.warm_rate_scale * (1 + level), 1.0)
    epochs = min(math.ceil(s.warm_epochs * (1 + level)), t.epochs)
    days, span_why = history_span(profile, champion, s)
    items = champion.new_item_share + champion.removed_item_share
    return StartDecision(
        warm=True, rate_scale=scale, epochs=epochs, history_days=days,
        reasons=(
            f"drift {severity} (share {share:.2f}, level {level:.2f}), {champion.new_user_share:.1%} new users "
            f"(at most {s.warm_max_new_users:.0%}) and {items:.1%} of the catalogue changed (at most "
            f"{s.warm_max_new_items:.0%}): continue from the champion{version(champion)}",
            f"rates x{scale:g} and {epochs} epochs (warm_rate_scale {s.warm_rate_scale:g} and warm_epochs "
            f"{s.warm_epochs}, x{1 + level:g} for the drift level)",
            span_why,
        ),
    )


def scratch_reasons(
    drift: dict[str, Any] | None, champion: ChampionInfo | None, s: ScheduleSettings, t: TrainSettings
) -> list[str]:
    """Every condition that rules a warm start out, one sentence each (empty: a warm start may go ahead)."""
    if not s.warm_start:
        return ["warm start from the champion is off (schedule.warm_start): from scratch (the default, by bench/backtest.py)"]
    if champion is None:
        return ["no champion to continue from: from scratch"]
    if drift is None:
        return ["no drift verdict: nothing says the champion still fits; from scratch"]
    out = []
    severity, share = drift.get("severity", "none"), float(drift.get("drifted_share") or 0.0)
    if severity == "major":
        out.append(f"drift major (share {share:.2f}): the champion learnt tastes that changed; retrain from scratch")
    if champion.embedding_dim != t.embedding_dim:
        out.append(f"the champion's tables are {champion.embedding_dim} wide, this run's {t.embedding_dim}: from scratch")
    if champion.new_user_share > s.warm_max_new_users:
        out.append(
            f"{champion.new_user_share:.1%} of the span's users are new to the champion{version(champion)} "
            f"(over {s.warm_max_new_users:.0%}): most rows would start untrained; from scratch"
        )
    changed = champion.new_item_share + champion.removed_item_share
    if changed > s.warm_max_new_items:
        out.append(
            f"the catalogue changed since the champion{version(champion)}: {champion.new_item_share:.1%} new items, "
            f"{champion.removed_item_share:.1%} removed (over {s.warm_max_new_items:.0%} together); from scratch"
        )
    return out


def history_span(profile: dict[str, Any], champion: ChampionInfo, s: ScheduleSettings) -> tuple[float | None, str]:
    """Days of recent history a warm update trains on, and why: the window's end back ``warm_span_days``,
    at least every day the champion has not seen; None (all of it) when the window is no longer.
    """
    days = float(s.warm_span_days)
    why = f"the last {days:g} days (warm_span_days)"
    if champion.days_unseen is not None and champion.days_unseen > days:
        days = float(champion.days_unseen)
        why = f"the last {days:g} days: every day since the champion's training data ended"
    per_day = float(profile.get("interactions_per_day") or 0.0)
    window = int(profile.get("interactions", 0)) / per_day if per_day > 0 else None
    if window is not None and window <= days:
        return None, f"the whole {window:.0f}-day window: it is no longer than {why.removeprefix('the ')}"
    if per_day > 0:
        why += f", about {per_day * days:,.0f} interactions"
    return days, why


def version(champion: ChampionInfo) -> str:
    return f" (version {champion.version})" if champion.version else ""
