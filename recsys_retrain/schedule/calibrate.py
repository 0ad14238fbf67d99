"""calibrate: the starting schedule of a run, from the data's profile, its drift and past runs.

Rules first, each one a sentence in the plan's reasons:

- Rows of sparse data are seen rarely: the decay is gentler (a higher floor) so late
  epochs still move rare rows. The embedding rate itself is not raised:
  Adagrad already gives a rarely updated row larger steps (its accumulated squared
  gradient is small), and in ``bench/scheduler.py`` a higher embedding rate pushed the
  model from the recency-popularity signal, which ranks later weeks best, into a
  per-user fit that ranks them worse.
- Drift makes old weights a worse guide: gentler decay, more patience; and, with
  ``drift_half_life`` set, old interactions a worse guide too: each epoch draws
  recent weeks more often (``recency_half_life``, shorter for stronger drift), at the
  same epoch size.
- Small windows need more passes to reach the same number of updates: the epoch
  budget is sized by a target number of examples seen, within bounds.
- Dense data with a strong popularity trend (high Gini) is easy to fit early: warm-up
  is short, and the dense rate starts ``trend_boost`` higher (1, none, by default:
  the probe below sets the rate level).
- The controller reads validation NDCG at ``validation_k`` (50), deeper than the
  served cut-off: a validation window holds few users, and NDCG@10 of each is mostly
  noise.
- No rule knows the best rate of a new dataset to better than a factor of a few, so
  the first epoch races multiples of the rules' rates (``probe_rates``) and keeps the
  best by validation; the race's extra passes over the data come out of the epoch
  budget, so a probed run costs no more than a static one.

Then the knowledge base: when similar past runs exist, their converged rates replace
the rules' rates and their best epochs size the budget (``source = "knowledge_base"``);
a narrower probe (``kb_probe_rates``: the suggestion and twice it) replaces the rules'
one, since one start at an averaged rate is a single draw of a bimodal outcome.

Last, with a champion given, where the run starts (``recsys_retrain.schedule.start``):
a short warm update of the champion at a lower rate on recent days for little drift and
a stable catalogue, from scratch otherwise (and always while ``warm_start`` is off).
"""

from __future__ import annotations

import math
from typing import Any

from recsys_retrain.schedule.knowledge import KnowledgeBase, features
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.probe import probe_passes
from recsys_retrain.schedule.start import ChampionInfo, warm_or_scratch
from recsys_retrain.settings import ScheduleSettings, TrainSettings

SEVERITY_WEIGHT = {"none": 0.0, "minor": 0.5, "major": 1.0}


def calibrate(
    profile: dict[str, Any],
    drift: dict[str, Any] | None = None,
    history: KnowledgeBase | None = None,
    settings: ScheduleSettings | None = None,
    train: TrainSettings | None = None,
    champion: ChampionInfo | None = None,
) -> SchedulePlan:
    """A SchedulePlan for data with this profile and drift verdict.

    Args:
        profile: ``DataProfile.to_dict()`` of the training data.
        drift: the drift step's result (``severity``, ``drifted_share``), or None.
        history: knowledge base of past runs (None or empty: rules only).
        settings: the schedule section (reference values of the rules).
        train: the train section (base rates, batch size, epoch budget).
        champion: the champion measured against this data; given, the plan records warm start
            or from scratch (``warm_or_scratch``) and a warm start rescales its rates and budget.
            None: no start decision (from scratch, as before).

    Returns:
        The plan, each data-dependent field with its reason.

    Example:
        >>> p = calibrate({"interactions": 80_000, "users": 900, "items": 1600, "density": 0.055, "gini": 0.6})
        >>> p.source, p.sparse_lr > 0, p.why("max_epochs") is not None
        ('rules', True, True)
    """
    s, t = settings or ScheduleSettings(), train or TrainSettings()
    n = max(int(profile.get("interactions", 0)), 1)
    items = max(int(profile.get("items", 1)), 1)
    density = float(profile.get("density", s.reference_density)) or s.reference_density
    gini = float(profile.get("gini", 0.0))
    severity = (drift or {}).get("severity", "none")
    drift_share = float((drift or {}).get("drifted_share", 0.0) or 0.0)
    drift_level = max(SEVERITY_WEIGHT.get(severity, 0.0), min(drift_share * 2, 1.0))

    plan = SchedulePlan(
        dense_lr=t.dense_lr, sparse_lr=t.sparse_lr, batch_size=t.batch_size, max_epochs=t.epochs,
        decay=s.decay, patience=s.patience, plateau_tol=s.plateau_tol, rollback_tol=s.rollback_tol,
        max_change=s.max_change, cooldown=s.cooldown, min_epochs=s.min_epochs, improve_cycles=s.improve_cycles,
        smoothing=s.smoothing, probe_tol=s.probe_tol, probe_z=s.probe_z, validation_k=s.validation_k,
        recency_half_life=t.recency_half_life,  # the train section's, unless the drift rule below sets one
    )
    per_item = n / items
    sparsity = min(max(s.reference_per_item / per_item, 0.5), 4.0)
    plan = plan.with_reason(
        "sparse_lr", t.sparse_lr * s.rate_boost,
        f"{per_item:.0f} interactions per item vs {s.reference_per_item:.0f} in the reference: embedding rate "
        f"x{s.rate_boost:g} (rate boost); Adagrad already gives rarely seen rows larger steps",
    )
    plan = plan.with_reason(
        "validation_k", s.validation_k,
        f"steer by validation NDCG@{s.validation_k}: ranking metrics of a small validation window are noisy at the served cut-off",
    )
    trend = gini >= s.trend_gini and density >= s.reference_density
    dense_lr = t.dense_lr * s.rate_boost * (s.trend_boost if trend else 1.0)
    plan = plan.with_reason(
        "dense_lr", dense_lr,
        f"gini {gini:.2f}, density {density:.4f}: "
        + ("dense data with a strong popularity trend" if trend else "no strong trend in dense data")
        + f": dense rate x{s.rate_boost * (s.trend_boost if trend else 1.0):g} (rate boost {s.rate_boost:g}"
        + (f", trend boost {s.trend_boost:g})" if trend else ")"),
    )
    floor = min(s.decay_floor * (1 + sparsity / 2 + drift_level), 0.8)
    plan = plan.with_reason(
        "decay_floor", floor, f"sparsity ratio {sparsity:.2f} and drift level {drift_level:.2f}: gentler decay floor"
    )
    if drift_level > 0:
        plan = plan.with_reason(
            "patience", s.patience + 1, f"drift {severity} (share {drift_share:.2f}): one more cycle of patience"
        )
    plan = plan.with_reason(
        "weight_decay", plan.weight_decay,
        f"dense L2 starts at {plan.weight_decay:g}: the controller raises it when training loss falls while validation falls",
    )
    plan = plan.with_reason(
        "beta1", plan.beta1, f"Adam's beta1 starts at {plan.beta1:g}: the controller lowers it when gradient norms spike"
    )
    span = span_days(profile)
    if drift_level > 0 and s.drift_half_life is not None and span is not None:
        half_life = max(span * s.drift_half_life / drift_level, 1.0)
        plan = plan.with_reason(
            "recency_half_life", half_life,
            f"drift level {drift_level:.2f} over a {span:.0f}-day window: an interaction {half_life:.0f} days older "
            "than the newest counts half in each epoch's draw (old interactions describe tastes that changed)",
        )
    epochs = min(max(math.ceil(s.target_examples / n), s.min_epochs + 2), t.epochs)
    plan = plan.with_reason(
        "max_epochs", epochs, f"{n} interactions: {epochs} epochs to see about {s.target_examples:,} examples (cap {t.epochs})"
    )
    steps_per_epoch = max(math.ceil(n / plan.batch_size), 1)
    warmup = min(max(steps_per_epoch // (4 if trend else 2), 10), 200)
    plan = plan.with_reason("warmup_steps", warmup, f"{steps_per_epoch} steps per epoch: warm-up over {warmup} steps at most")
    if len(s.probe_rates) > 1:
        plan = plan.with_reason(
            "probe_rates", tuple(float(m) for m in s.probe_rates),
            "no past run of similar data: the first epoch races the rules' rates x" + ", x".join(f"{m:g}" for m in s.probe_rates),
        )
        extra = extra_passes(len(s.probe_rates))
        budget = max(epochs - extra, s.min_epochs)
        plan = plan.with_reason(
            "max_epochs", budget,
            f"{n} interactions: {epochs} epochs to see about {s.target_examples:,} examples (cap {t.epochs}), "
            f"less the rate probe's {extra} extra passes over the data",
        )

    suggestion = history.suggest(features(profile, drift_share)) if history is not None else None
    if suggestion is None:
        return starting_point(plan, profile, drift, champion, s, t)
    from_kb = f"{len(suggestion.neighbours)} similar past runs ({', '.join(suggestion.neighbours)}; distance {suggestion.distance:.2f})"
    plan = plan.with_reason("dense_lr", suggestion.dense_lr, f"rate those runs converged to: {from_kb}")
    plan = plan.with_reason("sparse_lr", suggestion.sparse_lr, f"embedding rate those runs converged to: {from_kb}")
    budget = min(suggestion.max_epochs, t.epochs)
    plan = plan.with_reason("max_epochs", budget, f"1.5x the best epoch of {from_kb}")
    plan = plan.with_reason("warmup_steps", max(warmup // 2, 5), "past runs give the rate: shorter warm-up")
    rates = tuple(float(m) for m in s.kb_probe_rates)
    if len(rates) > 1:
        plan = plan.with_reason(
            "probe_rates", rates,
            f"rates from {from_kb}, known to a factor of two or so: the first epoch races them x" + ", x".join(f"{m:g}" for m in rates),
        )
        extra = extra_passes(len(rates))
        plan = plan.with_reason(
            "max_epochs", max(budget - extra, s.min_epochs),
            f"1.5x the best epoch of {from_kb}, less the rate probe's {extra} extra pass{'es' if extra > 1 else ''} over the data",
        )
    else:
        plan = plan.with_reason("probe_rates", (), f"rates from {from_kb}: no probe")
    from dataclasses import replace

    return starting_point(replace(plan, source="knowledge_base"), profile, drift, champion, s, t)


def starting_point(
    plan: SchedulePlan,
    profile: dict[str, Any],
    drift: dict[str, Any] | None,
    champion: ChampionInfo | None,
    s: ScheduleSettings,
    t: TrainSettings,
) -> SchedulePlan:
    """``plan`` with the warm-or-scratch decision applied; unchanged without a champion."""
    return plan if champion is None else warm_or_scratch(drift, profile, champion, s, t).apply(plan)


def span_days(profile: dict[str, Any]) -> float | None:
    """Days the profiled window spans (its interactions over its interactions per day); None when unknown."""
    per_day = float(profile.get("interactions_per_day") or 0.0)
    return int(profile.get("interactions", 0)) / per_day if per_day > 0 else None


def extra_passes(candidates: int) -> int:
    """Whole passes over the data that a probe of ``candidates`` adds to an epoch (taken out of the budget)."""
    return math.ceil(probe_passes(candidates) - 1 - 1e-9)
