"""The served model's quality per week: what users got, beside two fresh baselines on the same users.

``champion_monitor``'s ``served`` task scores the serving champion on each new week
(after the monitor, so a revert is scored as what serves) and writes ``served.json``
into the cycle folder; the ``record`` task logs it as ``served.*`` metrics of the
week's monitoring run, and the report draws it (served-vs-baselines panel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_retrain.io import write_json
from recsys_retrain.settings import Settings


def score_served(settings: Settings, run_dir: Path, window: str) -> dict[str, Any]:
    """NDCG@K on the week of the serving champion (what users got) and of two fresh baselines; written to ``served.json``.

    The baselines are the backtest's reference policies (``recsys_retrain.backtest.reference_model``):
    recent popularity and EASE, each fit on the cycle folder's history (everything before
    the week) and scored on the same users as the champion, so the report shows whether
    retraining pays. Keys: ``window``, ``version`` and ``ndcg`` of the champion (None
    without one), ``recent_pop_ndcg``, ``ease_ndcg`` and ``users`` (how many were scored).
    """
    from recsys_retrain.backtest import read_frames, reference_model
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.registry import candidates

    frames = read_frames({"run_dir": str(run_dir)})
    history, holdout, _ = frames
    k, key = settings.eval.k, f"ndcg_at_{settings.eval.k}"
    out: dict[str, Any] = {"window": window, "version": None, "ndcg": None}
    current = candidates.champion(settings)
    if current is not None:
        model, _ = candidates.try_load(settings, current.version)
        if model is not None:
            out.update(version=current.version, ndcg=user_metrics(model, history, holdout, k, settings.gate.head_share).metrics[key])
    for policy in ("recent_pop", "ease"):
        scored = user_metrics(reference_model(policy, frames), history, holdout, k, settings.gate.head_share)
        out[f"{policy}_ndcg"] = scored.metrics[key]
    out["users"] = len(scored.user_ids)
    write_json(out, run_dir / "served.json")
    return out


def served(pulled: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The ``served`` task's step: :func:`score_served` on the cycle folder the pull wrote (``cycle.pull``'s result).

    Not a ``recsys_retrain.cycle`` step: the baselines come from ``recsys_retrain.backtest``,
    which runs cycles itself.
    """
    from recsys_retrain.settings import get_settings

    return score_served(settings or get_settings(), Path(pulled["run_dir"]), f"{pulled['start']}/{pulled['end']}")
