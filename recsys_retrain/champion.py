"""The champion as a cycle's steps meet it: what data it has seen, and whether a run may start from it.

A version's data ends at its ``data_end`` tag (a refit: its window's end), else at its
window's start (a challenger is trained on what came before its window; versions
registered before ``data_end`` was recorded). :func:`judged_in_place` keeps a champion
that has seen a window from being judged on it; :func:`champion_info` and
:func:`warm_init` are the warm start's two halves: calibrate measures the champion
against the new data (``recsys_retrain.schedule.start``), and train loads the one the
plan names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import utc
from recsys_retrain.settings import Settings


@dataclass(frozen=True)
class KnownChampion:
    """A champion handed over directly instead of read from the registry (the backtest replays policies without one).

    Attributes:
        model: the loaded Recommender.
        data_end: the end of the data it has seen (ISO or Timestamp).
        version: a name for the plan's reasons and ``warm_from``.
    """

    model: Any
    data_end: Any
    version: str


def judged_in_place(s: Settings, current, model, pulled: dict[str, Any]):
    """The version (and model) a challenger of this window is compared with: ``current``, if it has not seen the window.

    A champion's data ends at its ``data_end`` (a refit: its window's end), else at its
    window's start. One that has seen this window cannot be judged on it, with one
    exception: this window's own refit, after the window was decided and promoted (a
    re-run of the cycle). Then its gated version stands in for it, as if the refit were
    off: the challenger meets itself, nothing is recorded and nothing moves.
    """
    from recsys_retrain.registry import candidates

    trained_until, window = utc(current.trained_until), f"{pulled['start']}/{pulled['end']}"
    if trained_until <= utc(pulled["start"]):
        return current, model
    if current.refit_of is not None and current.window == window:
        gated, why = candidates.try_load(s, current.refit_of)
        if gated is not None:
            return candidates.Candidate.from_dict({**current.to_dict(), "version": current.refit_of, "refit_of": None,
                                                   "data_end": pulled["start"]}), gated
        raise PipelineError(f"champion v{current.version} is this window's refit and its gated v{current.refit_of} "
                            f"cannot be loaded ({why}): nothing to judge this window's challenger against")
    raise PipelineError(
        f"champion v{current.version} was trained on data up to {trained_until.date()}, after this "
        f"window's start {utc(pulled['start']).date()}: it cannot be judged on this window"
    )


def champion_info(s: Settings, fit: pd.DataFrame, catalogue: pd.DataFrame, start: str, known: KnownChampion | None = None):
    """The champion measured against this cycle's data, for the warm-or-scratch decision; None without one.

    Its encoder's users against the users of the span a warm update would train on (the
    last ``schedule.warm_span_days`` of the history, or every day the champion has not
    seen when that is longer), its items against the catalogue, and ``days_unseen`` from
    the end of its data (``data_end``, else its window's start) to this window's start.
    None (from scratch) when there is no champion, its artifact does not load, or it has
    seen data from this window on. ``known`` stands in for the registry's champion.
    """
    from recsys_retrain.registry import candidates
    from recsys_retrain.schedule.start import ChampionInfo
    from recsys_retrain.train.warm_start import embedding_dim

    if known is not None:
        model, version, data_end = known.model, known.version, known.data_end
    else:
        current = candidates.champion(s)
        if current is None:
            return None
        model, _ = candidates.try_load(s, current.version)
        version, data_end = current.version, current.trained_until
    days_unseen = (utc(start) - utc(data_end)).total_seconds() / 86_400
    if model is None or days_unseen < 0:
        return None
    span = max(s.schedule.warm_span_days, days_unseen)
    users = fit.loc[fit["timestamp"] >= utc(start) - timedelta(days=span), "user_id"]
    encoder = model.encoder
    return ChampionInfo.compare(encoder.user_ids, encoder.item_ids, users, catalogue["item_id"],
                                embedding_dim(model.model), days_unseen, str(version))


def warm_init(s: Settings, plan: dict[str, Any] | None, known: KnownChampion | None = None):
    """The champion a warm-start plan continues from, and its version; ``(None, None)`` for a run from scratch.

    ``known`` (the one ``champion_info`` measured, outside the registry) is returned as it is.
    """
    from recsys_retrain.registry import candidates

    if not plan or not plan.get("plan") or not plan["plan"].get("warm_start"):
        return None, None
    if known is not None:
        return known.model, known.version
    version = int((plan.get("champion") or {}).get("version") or 0)
    if not version:
        raise PipelineError("the plan chose a warm start but names no champion version: run calibrate again")
    model, why = candidates.try_load(s, version)
    if model is None:
        raise PipelineError(f"the plan warm-starts from champion v{version}, which cannot be loaded ({why}): run calibrate again")
    return model, version
