"""Top-K for a registered model: the item side computed once, each request only scores its users.

A two-tower score splits into a user part and an item part: ``<user(u), item(i)> +
prior(i)``, blended with the 28-day log share. Everything about the items (their tower
vectors with their popularity buckets, the prior, the blend term) depends on the model
and on the item state it stores (as of the end of its data, ``data_end``), not on the
user, so :class:`Ranker` computes it once at load; a request runs the user tower, one
matrix product and a top-K. The ranking is the evaluation's (``Recommender.score`` with
the same history): the same tensors, computed in the same order.

Users the model cannot rank (no profile and no history anywhere in the feature store)
get recent popularity, the 28-day log share of each item at ``data_end``, with
``source = "recent_popularity"``. Items added to the catalogue after training are left
out: the model has no vector for them, and a popularity slot would rank them by counts
the model never saw; they enter with the next retrain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_retrain.model import RECENT_PRIOR, Recommender

MODEL, POPULAR = "model", "recent_popularity"  # the ``source`` of a user's recommendations
PROFILE_COLUMNS = ["user_id", "user_gender", "user_age", "user_occupation"]
REQUEST_COLUMNS = [*PROFILE_COLUMNS, "recent_items", "seen_items", "known"]


@dataclass(frozen=True)
class Recommendations:
    """One request's answer: per user, the top-K item ids (best first), their scores and where they came from."""

    frame: pd.DataFrame  # user_id, item_ids (list), scores (list), source

    def to_records(self) -> list[dict]:
        return self.frame.to_dict("records")


class Ranker:
    """Ranks a ``Recommender``'s catalogue for users described by their profile and history.

    Args:
        recommender: a registered model (``recsys_retrain.model.Recommender``).
        chunk: users scored per matrix product; bounds memory at ``chunk x catalogue`` (64 users x 100,000
            items is 26 MB, which the cache serves: the fastest size per user on this project's 2-core machine).

    Example:
        >>> from recsys_retrain.model import FeatureEncoder, build_two_tower
        >>> enc = FeatureEncoder(user_ids=(1,), item_ids=(10, 20, 30), genders=("F",), occupations=("x",), genres=("a",))
        >>> items = pd.DataFrame({"item_id": [10, 20, 30], "item_genres": ["a", "a", ""], "item_release_year": [1990] * 3})
        >>> ranker = Ranker(Recommender(build_two_tower(enc, dim=4), enc, items))
        >>> users = pd.DataFrame({"user_id": [1], "user_gender": ["F"], "user_age": [30], "user_occupation": ["x"],
        ...                       "recent_items": [[10]], "seen_items": [[10]], "known": [True]})
        >>> answer = ranker.top_k(users, k=2)
        >>> answer.frame.loc[0, "item_ids"] in ([20, 30], [30, 20]), answer.frame.loc[0, "source"]
        (True, 'model')
    """

    def __init__(self, recommender: Recommender, chunk: int = 64) -> None:
        self.recommender = recommender.eval()
        self.encoder = recommender.encoder
        self.chunk = chunk
        catalogue = recommender.catalogue
        self.item_ids = catalogue["item_id"].to_numpy(np.int64)
        self._rows = pd.Index(self.item_ids)
        prior = getattr(recommender, "prior_features", None)
        features = torch.from_numpy(np.asarray(prior, dtype=np.float32)) if prior is not None else None
        model = recommender.model
        with torch.no_grad():
            self.item_vectors = model.item_embedding(self.encoder.item_kjt(catalogue, recommender.recent))
            prior_module = getattr(model, "prior", None)
            self.item_bias = prior_module(features) if prior_module is not None and features is not None else None
        blend = getattr(recommender, "blend", 0.0)
        self.blend = blend if features is not None else 0.0
        self.recent_share = features[:, RECENT_PRIOR] if features is not None else torch.zeros(len(self.item_ids))
        self.blend_term = self.blend * self.recent_share
        self._scratch = threading.local()

    def scores(self, users: pd.DataFrame) -> torch.Tensor:
        """``[U, N]`` served scores: what ``Recommender.score`` gives for the same profiles and history bags."""
        return self._scores(users).clone()

    @torch.no_grad()
    def _scores(self, users: pd.DataFrame) -> torch.Tensor:
        """``scores`` in this thread's scratch buffer: valid until its next call."""
        bags = self._bags(users["recent_items"])
        kjt = self.encoder.user_kjt_encoded(self.encoder.encode_users(users), bags)
        vectors = self.recommender.model.user_embedding(kjt)
        # The product goes into a buffer this thread reuses: a fresh [chunk, N] tensor per chunk costs its page faults
        # (a quarter of the time at 100,000 items). Same kernel, same inputs: the same values as ``vectors @ items.T``.
        scores = torch.matmul(vectors, self.item_vectors.T, out=self._buffer(len(users)))
        if self.item_bias is not None:
            scores += self.item_bias  # in place: the same float operations as the evaluation's, no [U, N] copies
        if self.blend == 0.0:
            return scores
        return scores.mul_(1.0 - self.blend).add_(self.blend_term)

    def top_k(self, users: pd.DataFrame, k: int = 10, exclude_seen: bool = True) -> Recommendations:
        """The ``k`` best catalogue items of each user, best first.

        Args:
            users: ``REQUEST_COLUMNS``: the profile, ``recent_items`` (item ids of the most
                recent interactions, oldest first: the history bag), ``seen_items`` (every
                item id interacted with) and ``known`` (False: the feature store has neither
                profile nor history, and the user gets recent popularity).
            k: items per user (at most the catalogue).
            exclude_seen: leave out ``seen_items`` (off in repeat domains: groceries, music).

        Returns:
            One row per input row, in input order.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, len(self.item_ids))
        known = users["known"].to_numpy(bool)
        ids = np.zeros((len(users), k), np.int64)
        vals = np.zeros((len(users), k), np.float32)
        for start in range(0, len(users), self.chunk):
            part = users.iloc[start : start + self.chunk] if len(users) > self.chunk else users
            part_known = known[start : start + self.chunk]
            if part_known.all():
                scores = self._scores(part)
            else:
                scores = torch.empty(len(part), len(self.item_ids))
                if part_known.any():
                    scores[torch.from_numpy(part_known)] = self._scores(part[part_known])
                scores[torch.from_numpy(~part_known)] = self.recent_share
            if exclude_seen:
                scores = self._mask_seen(scores, part["seen_items"])
            top = torch.topk(scores, k=k, dim=1)
            ids[start : start + len(part)] = self.item_ids[top.indices.numpy()]
            vals[start : start + len(part)] = top.values.numpy()
        frame = pd.DataFrame({
            "user_id": users["user_id"].to_numpy(np.int64),
            "item_ids": ids.tolist(),
            "scores": vals.astype(np.float64).tolist(),
            "source": np.where(known, MODEL, POPULAR),
        })
        return Recommendations(frame)

    def _buffer(self, rows: int) -> torch.Tensor:
        """A ``[rows, N]`` view of this thread's scratch tensor (requests may run on several threads)."""
        held = getattr(self._scratch, "tensor", None)
        if held is None or held.shape[0] < rows:
            held = self._scratch.tensor = torch.empty(max(rows, self.chunk), len(self.item_ids))
        return held[:rows]

    def _flat_rows(self, lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(user position, catalogue row) of every listed item id the model knows, in list order; one index lookup."""
        lists = [items if items is not None else [] for items in lists]
        lengths = np.fromiter((len(items) for items in lists), np.int64, len(lists))
        flat = np.fromiter((i for items in lists for i in items), np.int64, int(lengths.sum()))
        rows = self._rows.get_indexer(flat)
        user = np.repeat(np.arange(len(lists)), lengths)
        keep = rows >= 0
        return user[keep], rows[keep].astype(np.int64)

    def _bags(self, recent: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """History bags (catalogue rows) from item-id lists; ids the model does not know are dropped."""
        user, rows = self._flat_rows(recent)
        return rows, np.bincount(user, minlength=len(recent)).astype(np.int64)

    def _mask_seen(self, scores: torch.Tensor, seen: pd.Series) -> torch.Tensor:
        user, rows = self._flat_rows(seen)
        scores[torch.from_numpy(user), torch.from_numpy(rows)] = float("-inf")
        return scores


def requests_from_history(users: pd.DataFrame, history: pd.DataFrame, cap: int) -> pd.DataFrame:
    """``REQUEST_COLUMNS`` rows built from an interaction log, as the online store's history view holds them.

    ``recent_items``: the ``cap`` most recent interactions (oldest first, ties in time by
    item id, as the log is sorted); ``seen_items``: every distinct item, sorted. The
    offline twin of the online read, for evaluation-identical rankings and tests.
    """
    ordered = history.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    grouped = ordered.groupby("user_id")["item_id"]
    recent = grouped.apply(lambda s: s.to_numpy(np.int64)[-cap:].tolist())
    seen = grouped.apply(lambda s: sorted(set(s.tolist())))
    out = users[PROFILE_COLUMNS].copy()
    out["recent_items"] = [recent.get(u, []) for u in out["user_id"]]
    out["seen_items"] = [seen.get(u, []) for u in out["user_id"]]
    out["known"] = True
    return out.reset_index(drop=True)
