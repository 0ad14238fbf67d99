"""The serving blend of the model's score with recent popularity, fit on a validation tail.

On a temporal split the towers are fit to the past: their dot product carries the
catalogue's popularity as it was over the whole training window, and the weeks after
it are ranked better by what was watched last (recent popularity) than by that. The
additive item prior (``recsys_retrain.model.item_prior``) starts the model at recent
popularity, but training fits its weights in-sample, beside the towers. A blend
``(1 - b) * model + b * 28-day log share`` chosen by NDCG on interactions after the
training window keeps what the model adds on top and no more: ``b = 1`` is recent
popularity itself, so the served model ranks the tail at least as well as it (on the
tail the blend was fit on).
"""

from __future__ import annotations

import copy
import math

import pandas as pd

from recsys_retrain.evaluate import user_metrics
from recsys_retrain.model import Recommender

BLEND_GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)  # 0: the model alone; 1: recent popularity alone


def blend_ndcg(
    recommender: Recommender, history: pd.DataFrame, holdout: pd.DataFrame, k: int = 10,
    grid: tuple[float, ...] = BLEND_GRID,
) -> dict[float, float]:
    """NDCG@k on ``holdout`` of the recommender served at each blend of ``grid``.

    Args:
        recommender: the trained model (its own ``blend`` is left as it is; copies are scored).
        history: the interactions it was trained on (the scoring history).
        holdout: interactions after ``history`` (a validation tail).
        k: the cut-off.
        grid: the blends to try, each within [0, 1].

    Returns:
        ``{blend: mean NDCG@k}``, in the order of ``grid``.
    """
    out = {}
    for blend in grid:
        candidate = copy.copy(recommender)  # shares the towers; only ``blend`` differs
        candidate.blend = float(blend)
        out[float(blend)] = user_metrics(candidate, history, holdout, k).mean_ndcg
    return out


def best_blend(ndcg: dict[float, float]) -> float:
    """The blend of the highest NDCG; on a tie the smallest, the one that keeps most of the model.

    A tail without users to score (every NDCG NaN) gives 0: nothing says to move off the model.

    Example:
        >>> best_blend({0.0: 0.30, 0.9: 0.37, 1.0: 0.37})
        0.9
    """
    scored = {b: v for b, v in ndcg.items() if not math.isnan(v)}
    if not scored:
        return 0.0
    top = max(scored.values())
    return min(b for b, v in scored.items() if v == top)
