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

from recsys_retrain.model import ENCODED_USER_COLUMNS
from recsys_retrain.records import json_float


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics over holdout users, with the counts they rest on."""

    k: int
    ndcg: float
    recall: float
    n_users: int
    n_cold_users: int
    n_items: int
    map: float = math.nan
    mrr: float = math.nan
    hit_rate: float = math.nan
    coverage: float = math.nan
    cold_ndcg: float = math.nan
    longtail_ndcg: float = math.nan

    @property
    def metrics(self) -> dict[str, float]:
        """Metric names as logged to MLflow (``ndcg_at_10``...)."""
        k = self.k
        return {
            f"ndcg_at_{k}": self.ndcg, f"recall_at_{k}": self.recall, f"map_at_{k}": self.map,
            f"mrr_at_{k}": self.mrr, f"hit_rate_at_{k}": self.hit_rate, f"coverage_at_{k}": self.coverage,
        }

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


def average_precision_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user AP@k: mean of precision@i at each hit rank i <= k, over min(k, relevant).

    Example:
        >>> average_precision_at_k(torch.tensor([[0., 1., 1.]]), torch.tensor([2]), 3)  # (1/2 + 2/3) / 2
        tensor([0.5833])
    """
    h = hits[:, :k]
    precision = torch.cumsum(h, dim=1) / torch.arange(1, h.shape[1] + 1, dtype=torch.float32)
    denom = torch.clamp(n_relevant, max=k).clamp(min=1)
    return torch.where(n_relevant > 0, (precision * h).sum(dim=1) / denom, torch.zeros(len(h)))


def reciprocal_rank_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user 1 / rank of the first hit within the top k (0 without a hit).

    Example:
        >>> reciprocal_rank_at_k(torch.tensor([[0., 0., 1.], [0., 0., 0.]]), 3)
        tensor([0.3333, 0.0000])
    """
    h = hits[:, :k]
    first = torch.argmax(h, dim=1)
    return torch.where(h.sum(dim=1) > 0, 1.0 / (first + 1).float(), torch.zeros(len(h)))


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
    users = holdout.sort_values("timestamp").drop_duplicates("user_id")[ENCODED_USER_COLUMNS]
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
            ``score(users, history) -> [U, N]`` (``recsys_retrain.model.Recommender``).
        history: interactions before the holdout (their items are excluded per user).
        holdout: the window to rank; relevant items are its items not already in history.
        k: cut-off.
    """
    per_user = user_metrics(recommender, history, holdout, k)
    means = per_user.metrics
    return EvalResult(
        k=k,
        ndcg=per_user.mean_ndcg,
        recall=means[f"recall_at_{k}"],
        n_users=per_user.n_users,
        n_cold_users=int(per_user.is_cold.sum()),
        n_items=per_user.n_items,
        map=_mean(per_user.ap) if per_user.ap is not None else math.nan,
        mrr=_mean(per_user.rr) if per_user.rr is not None else math.nan,
        hit_rate=_mean(per_user.hit) if per_user.hit is not None else math.nan,
        coverage=per_user.coverage,
        cold_ndcg=means[f"cold_ndcg_at_{k}"],
        longtail_ndcg=means[f"longtail_ndcg_at_{k}"],
    )


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


@dataclass(frozen=True)
class UserEval:
    """Per-user metrics of one model on one holdout (users with at least one new item).

    ``longtail_ndcg`` is NaN for users with no long-tail item in their holdout;
    ``coverage`` is the share of the catalogue that appears in any user's top K.
    """

    k: int
    user_ids: np.ndarray
    ndcg: np.ndarray
    recall: np.ndarray
    is_cold: np.ndarray
    longtail_ndcg: np.ndarray
    coverage: float
    n_items: int
    ap: np.ndarray | None = None  # per-user AP@K, RR@K and hit@K (None in dicts of older versions)
    rr: np.ndarray | None = None
    hit: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def mean_ndcg(self) -> float:
        return float(self.ndcg.mean()) if self.n_users else math.nan

    @property
    def metrics(self) -> dict[str, float]:
        """Means, named as MLflow metrics (``ndcg_at_10`` ...)."""
        k = self.k
        return {
            f"ndcg_at_{k}": self.mean_ndcg,
            f"recall_at_{k}": float(self.recall.mean()) if self.n_users else math.nan,
            f"coverage_at_{k}": self.coverage,
            f"cold_ndcg_at_{k}": _mean(self.ndcg[self.is_cold]),
            f"longtail_ndcg_at_{k}": _mean(self.longtail_ndcg[~np.isnan(self.longtail_ndcg)]),
        }

    @property
    def segment_notes(self) -> dict[str, str]:
        """Why a mean in ``metrics`` has no value: its segment is empty in this window."""
        k, notes = self.k, {}
        if not self.n_users:
            notes.update({f"ndcg_at_{k}": "no users in the window", f"recall_at_{k}": "no users in the window"})
        if not self.is_cold.any():
            notes[f"cold_ndcg_at_{k}"] = "no cold users in the window (every user has history)"
        if np.isnan(self.longtail_ndcg).all():
            notes[f"longtail_ndcg_at_{k}"] = "no user met a long-tail item in the window"
        return notes

    def reported(self) -> dict[str, Any]:
        """``metrics`` as they leave a task (XCom, JSON, MLflow): an empty segment's mean is null, never NaN,
        and ``notes`` says why (``segment_notes``)."""
        return {**{name: json_float(v) for name, v in self.metrics.items()}, "notes": self.segment_notes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "user_ids": self.user_ids.tolist(),
            "ndcg": self.ndcg.tolist(),
            "recall": self.recall.tolist(),
            "is_cold": self.is_cold.tolist(),
            "longtail_ndcg": _nan_to_none(self.longtail_ndcg),
            "coverage": self.coverage,
            "n_items": self.n_items,
            **{name: getattr(self, name).tolist() for name in ("ap", "rr", "hit") if getattr(self, name) is not None},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserEval:
        return cls(
            k=int(d["k"]),
            user_ids=np.asarray(d["user_ids"], dtype=np.int64),
            ndcg=np.asarray(d["ndcg"], dtype=np.float64),
            recall=np.asarray(d["recall"], dtype=np.float64),
            is_cold=np.asarray(d["is_cold"], dtype=bool),
            longtail_ndcg=np.asarray([math.nan if v is None else v for v in d["longtail_ndcg"]], dtype=np.float64),
            coverage=float(d["coverage"]),
            n_items=int(d["n_items"]),
            **{name: np.asarray(d[name], dtype=np.float64) for name in ("ap", "rr", "hit") if name in d},
        )

    def __eq__(self, other: object) -> bool:  # arrays make the generated __eq__ ambiguous
        return isinstance(other, UserEval) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def long_tail_items(history: pd.DataFrame, item_ids: pd.Index, head_share: float) -> np.ndarray:
    """``[N]`` bool over ``item_ids``: True for items outside the popularity head.

    The head is the smallest set of most-interacted items that together hold
    ``head_share`` of the history's interactions; items never seen are long tail.

    Example:
        >>> h = pd.DataFrame({"item_id": [1, 1, 1, 2, 3]})
        >>> long_tail_items(h, pd.Index([1, 2, 3, 4]), 0.5).tolist()
        [False, True, True, True]
    """
    counts = history["item_id"].value_counts().reindex(item_ids).fillna(0).to_numpy(np.float64)
    total = counts.sum()
    if total == 0:
        return np.ones(len(item_ids), dtype=bool)
    order = np.argsort(-counts, kind="stable")
    cum = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cum, head_share * total) + 1)
    tail = np.ones(len(item_ids), dtype=bool)
    tail[order[:n_head]] = False
    return tail


@dataclass(frozen=True)
class Ranking:
    """What full ranking of a holdout needs, for its users with at least one new item to find.

    Attributes:
        users: those users' rows of the holdout (``holdout_users``), in row order.
        item_ids: the recommender's catalogue order, the columns of the matrices.
        seen / relevant: users x items, items met in history / new items met in the holdout.
        n_relevant: new items per user (the Recall denominator).
    """

    users: pd.DataFrame
    item_ids: pd.Index
    seen: torch.Tensor
    relevant: torch.Tensor
    n_relevant: torch.Tensor


def ranking(recommender: Any, history: pd.DataFrame, holdout: pd.DataFrame) -> Ranking:
    """The users of ``holdout`` with something new to find, and their seen / relevant item matrices."""
    users = holdout_users(history, holdout)
    item_ids = pd.Index(recommender.catalogue["item_id"].astype(np.int64))
    seen = interaction_matrix(history, users["user_id"], item_ids)
    relevant = interaction_matrix(holdout, users["user_id"], item_ids) & ~seen
    n_relevant = torch.from_numpy(new_items_per_user(history, holdout, users["user_id"]))
    keep = n_relevant > 0
    kept = users[keep.numpy()].reset_index(drop=True)
    return Ranking(kept, item_ids, seen[keep], relevant[keep], n_relevant[keep])


CHUNK_USERS = 1024
"""Users scored at a time: evaluation holds ``CHUNK_USERS x catalogue`` scores and masks, whatever the number
of users (1,024 x 50,000 items: about 200 MB of float32 scores). MovieLens-size holdouts fit in one chunk."""


@dataclass(frozen=True)
class _Pairs:
    """(user row, item column) pairs sorted by user row, sliced into dense blocks of users."""

    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, users: pd.Index, item_ids: pd.Index) -> _Pairs:
        u = users.get_indexer(frame["user_id"])
        i = item_ids.get_indexer(frame["item_id"])
        keep = (u >= 0) & (i >= 0)
        order = np.argsort(u[keep], kind="stable")
        return cls(u[keep][order], i[keep][order])

    def block(self, lo: int, hi: int, n_items: int) -> torch.Tensor:
        """``[hi - lo, n_items]`` bool for the users of rows ``lo..hi-1``."""
        a, b = np.searchsorted(self.rows, [lo, hi])
        mat = torch.zeros(hi - lo, n_items, dtype=torch.bool)
        mat[torch.from_numpy(self.rows[a:b] - lo), torch.from_numpy(self.cols[a:b])] = True
        return mat


def user_metrics(
    recommender: Any,
    history: pd.DataFrame,
    holdout: pd.DataFrame,
    k: int,
    head_share: float = 0.5,
    chunk_users: int = CHUNK_USERS,
) -> UserEval:
    """Full-ranking per-user NDCG@K / Recall@K, segments and coverage of one model.

    The per-user vectors feed the gate's paired bootstrap; :func:`evaluate` reports
    their means. Users are scored ``chunk_users`` at a time with a running union of
    the top-K items (coverage), so memory is bounded by ``chunk_users x catalogue``;
    every per-user figure depends on that user's row alone, so the result does not
    depend on the chunk size (``tests/test_evaluate.py``).

    Args:
        recommender: ``catalogue`` frame with ``item_id`` and ``score(users, history) -> [U, N]``.
        history: interactions before the holdout (excluded from ranking; defines cold
            users and item popularity).
        holdout: the window to rank.
        chunk_users: users scored at a time.
    """
    from recsys_retrain.scoring import chunk_scorer

    users = holdout_users(history, holdout)
    item_ids = pd.Index(recommender.catalogue["item_id"].astype(np.int64))
    n_new = new_items_per_user(history, holdout, users["user_id"])
    kept = users[n_new > 0].reset_index(drop=True)
    n_relevant = torch.from_numpy(n_new[n_new > 0])
    if kept.empty:
        empty = np.zeros(0)
        return UserEval(k, empty.astype(np.int64), empty, empty, empty.astype(bool), empty, math.nan, len(item_ids))
    index, n_items = pd.Index(kept["user_id"]), len(item_ids)
    seen_pairs, holdout_pairs = _Pairs.of(history, index, item_ids), _Pairs.of(holdout, index, item_ids)
    tail = torch.from_numpy(long_tail_items(history, item_ids, head_share))
    score = chunk_scorer(recommender, history)
    covered = torch.zeros(n_items, dtype=torch.bool)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("ndcg", "recall", "ap", "rr", "hit", "tail")}
    for lo in range(0, len(kept), max(1, chunk_users)):
        hi = min(lo + max(1, chunk_users), len(kept))
        seen = seen_pairs.block(lo, hi, n_items)
        relevant = holdout_pairs.block(lo, hi, n_items) & ~seen
        scores = score(kept.iloc[lo:hi]).float()
        top = torch.topk(scores.masked_fill(seen, float("-inf")), k=min(k, n_items), dim=1).indices
        del scores, seen
        n_rel = n_relevant[lo:hi]
        hits, tail_hits = _padded(torch.gather(relevant, 1, top), k), _padded(torch.gather(relevant & tail, 1, top), k)
        n_tail = (relevant & tail).sum(dim=1)
        covered[top.reshape(-1)] = True
        parts["ndcg"].append(ndcg_at_k(hits, n_rel, k).double().numpy())
        parts["recall"].append(recall_at_k(hits, n_rel, k).double().numpy())
        parts["ap"].append(average_precision_at_k(hits, n_rel, k).double().numpy())
        parts["rr"].append(reciprocal_rank_at_k(hits, k).double().numpy())
        parts["hit"].append((hits[:, :k].sum(dim=1) > 0).double().numpy())
        tail_ndcg = ndcg_at_k(tail_hits, n_tail, k).double().numpy()
        parts["tail"].append(np.where(n_tail.numpy() > 0, tail_ndcg, np.nan))
    out = {name: np.concatenate(values) for name, values in parts.items()}
    return UserEval(
        ap=out["ap"], rr=out["rr"], hit=out["hit"], k=k,
        user_ids=kept["user_id"].to_numpy(np.int64),
        ndcg=out["ndcg"], recall=out["recall"],
        is_cold=kept["is_cold"].to_numpy(bool),
        longtail_ndcg=out["tail"],
        coverage=float(int(covered.sum()) / max(n_items, 1)),
        n_items=n_items,
    )


def _padded(hits: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 float hits padded with misses to ``k`` columns (a catalogue smaller than k)."""
    hits = hits.float()
    return torch.nn.functional.pad(hits, (0, k - hits.shape[1])) if hits.shape[1] < k else hits
