"""Full-ranking evaluation: every catalogue item is a candidate, no sampled negatives.

Sampled-negative metrics flatter weak models and can even reorder them, so each
holdout user's scores cover the whole catalogue; items the user already
interacted with before the holdout are excluded, as a recommender would never
show them again. Metrics are computed per user (for significance tests later)
and averaged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

USER_COLUMNS = ["user_id", "user_gender", "user_age", "user_occupation"]


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics over holdout users, with the counts they rest on."""

    k: int
    ndcg: float
    recall: float
    n_users: int
    n_cold_users: int
    n_items: int

    @property
    def metrics(self) -> dict[str, float]:
        """Metric names as logged to MLflow (``ndcg_at_10``...)."""
        return {f"ndcg_at_{self.k}": self.ndcg, f"recall_at_{self.k}": self.recall}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(**d)


def topk_hits(scores: torch.Tensor, relevant: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """Which of each user's top-k items are relevant.

    Args:
        scores: ``[U, N]`` model scores.
        relevant: ``[U, N]`` bool, the user's holdout items.
        exclude: ``[U, N]`` bool, items seen before the holdout (never ranked).
        k: cut-off.

    Returns:
        ``[U, k]`` float 0/1, ordered from rank 1 to rank k.
    """
    masked = scores.masked_fill(exclude, float("-inf"))
    top = torch.topk(masked, k=min(k, scores.shape[1]), dim=1).indices
    hits = torch.gather(relevant, 1, top).float()
    if hits.shape[1] < k:
        hits = torch.nn.functional.pad(hits, (0, k - hits.shape[1]))
    return hits


def ndcg_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user NDCG@k with binary relevance: DCG of the top k over the ideal DCG.

    Example:
        >>> ndcg_at_k(torch.tensor([[0., 1.]]), torch.tensor([1]), 2)  # hit at rank 2
        tensor([0.6309])
    """
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    dcg = (hits[:, :k] * discounts).sum(dim=1)
    ideal_len = torch.clamp(n_relevant, max=k)
    ideal = torch.cumsum(discounts, 0)[torch.clamp(ideal_len - 1, min=0)]
    return torch.where(ideal_len > 0, dcg / ideal, torch.zeros_like(dcg))


def recall_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user Recall@k: share of the user's holdout items found in the top k.

    Example:
        >>> recall_at_k(torch.tensor([[1., 0.]]), torch.tensor([4]), 2)
        tensor([0.2500])
    """
    found = hits[:, :k].sum(dim=1)
    return torch.where(n_relevant > 0, found / n_relevant.clamp(min=1), torch.zeros_like(found))


def holdout_users(history: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """One row per holdout user with profile features at their first holdout event."""
    users = holdout.sort_values("timestamp").drop_duplicates("user_id")[USER_COLUMNS]
    users = users.sort_values("user_id").reset_index(drop=True)
    users["is_cold"] = ~users["user_id"].isin(history["user_id"])
    return users


def interaction_matrix(frame: pd.DataFrame, users: pd.Series, item_ids: pd.Index) -> torch.Tensor:
    """``[U, N]`` bool: which catalogue items each user interacted with in ``frame``."""
    u = pd.Index(users).get_indexer(frame["user_id"])
    i = item_ids.get_indexer(frame["item_id"])
    keep = (u >= 0) & (i >= 0)
    mat = torch.zeros(len(users), len(item_ids), dtype=torch.bool)
    mat[torch.from_numpy(u[keep]), torch.from_numpy(i[keep])] = True
    return mat


def new_items_per_user(history: pd.DataFrame, holdout: pd.DataFrame, users: pd.Series) -> np.ndarray:
    """Distinct holdout items per user that the user had not interacted with before."""
    pairs = holdout[["user_id", "item_id"]].drop_duplicates()
    before = pd.MultiIndex.from_frame(history[["user_id", "item_id"]])
    fresh = pairs[~pd.MultiIndex.from_frame(pairs).isin(before)]
    return fresh.groupby("user_id").size().reindex(users).fillna(0).to_numpy(np.int64)


def evaluate(recommender: Any, history: pd.DataFrame, holdout: pd.DataFrame, k: int = 10) -> EvalResult:
    """Scores the whole catalogue for every holdout user and averages NDCG@k and Recall@k.

    Args:
        recommender: object with ``catalogue`` (frame with ``item_id``) and
            ``score(users, history) -> [U, N]`` (``pipeline.model.Recommender``).
        history: interactions before the holdout (their items are excluded per user).
        holdout: the window to rank; relevant items are its items not already in history.
        k: cut-off.
    """
    users = holdout_users(history, holdout)
    item_ids = pd.Index(recommender.catalogue["item_id"].astype(np.int64))
    seen = interaction_matrix(history, users["user_id"], item_ids)
    relevant = interaction_matrix(holdout, users["user_id"], item_ids) & ~seen
    # Counted on the frames, not the catalogue: an item a model cannot rank is a miss.
    n_relevant = torch.from_numpy(new_items_per_user(history, holdout, users["user_id"]))
    keep = n_relevant > 0
    if not bool(keep.any()):
        return EvalResult(k, math.nan, math.nan, 0, 0, len(item_ids))
    scores = recommender.score(users[keep.numpy()].reset_index(drop=True), history)
    hits = topk_hits(scores, relevant[keep], seen[keep], k)
    return EvalResult(
        k=k,
        ndcg=float(ndcg_at_k(hits, n_relevant[keep], k).mean()),
        recall=float(recall_at_k(hits, n_relevant[keep], k).mean()),
        n_users=int(keep.sum()),
        n_cold_users=int(users["is_cold"][keep.numpy()].sum()),
        n_items=len(item_ids),
    )
