"""Scoring many users in chunks: what does not depend on the user is computed once.

``Recommender.score(users, history)`` recomputes the item side (recent counts, the item
prior, the item tower) and sorts the whole history for the users' bags on every call,
which is right for one call and quadratic for a million users scored a thousand at a
time. :func:`chunk_scorer` computes those once per history and returns a function of
the users alone, with the same operations in the same order as ``Recommender.score``,
so a chunk's scores are the rows ``score`` gives for the same users
(``tests/test_scoring.py``). Any other model (a baseline, a wrapper) is called as it is.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from recsys_retrain.data.features import HISTORY_CAP
from recsys_retrain.model import RECENT_PRIOR, FeatureEncoder, Jagged, Recommender, item_prior

Scorer = Callable[[pd.DataFrame], torch.Tensor]
"""Users (one row each, profile columns) -> ``[U, N]`` scores over the catalogue."""


@dataclass(frozen=True)
class HistoryBags:
    """Each user's most recent ``HISTORY_CAP`` catalogue rows, indexed once, taken per chunk.

    ``take(ids)`` equals ``FeatureEncoder.histories(interactions, ids)``.
    """

    users: pd.Index  # users with a bag, sorted
    starts: np.ndarray  # [len(users)] offset of each bag in rows
    lengths: np.ndarray  # [len(users)]
    rows: np.ndarray  # catalogue rows, oldest first within each bag

    @classmethod
    def build(cls, encoder: FeatureEncoder, interactions: pd.DataFrame) -> HistoryBags:
        rows = encoder.item_rows(interactions["item_id"])
        frame = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(), "row": rows,
                              "ts": interactions["timestamp"].to_numpy()})
        frame = frame[frame["row"] >= 0].sort_values(["user_id", "ts"], kind="stable")
        user = frame["user_id"].to_numpy()
        ids, first, count = np.unique(user, return_index=True, return_counts=True)
        keep_from = np.repeat(first + np.maximum(count - HISTORY_CAP, 0), count)
        kept = np.arange(len(user)) >= keep_from
        lengths = np.minimum(count, HISTORY_CAP).astype(np.int64)
        return cls(pd.Index(ids), np.cumsum(lengths) - lengths, lengths, frame["row"].to_numpy()[kept].astype(np.int64))

    def take(self, user_ids: np.ndarray) -> Jagged:
        at = self.users.get_indexer(np.asarray(user_ids))
        lengths = np.where(at >= 0, self.lengths[at], 0).astype(np.int64)
        starts = np.where(at >= 0, self.starts[at], 0)
        ends = np.cumsum(lengths)
        offsets = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
        return self.rows[np.repeat(starts, lengths) + offsets], lengths


_LAST: list[tuple] = []  # the last history_side: (weak reference to the history, encoder's items, catalogue's items, result)


def history_side(encoder: FeatureEncoder, history: pd.DataFrame, catalogue: pd.DataFrame) -> tuple[Any, np.ndarray, HistoryBags]:
    """What scoring needs of a history, whatever the weights: recent counts, the item prior, the users' bags.

    Kept for the last history object (with the encoder's and the catalogue's items it
    was computed for): training validates every probe candidate, epoch and blend on one
    history, each through a new gathered model, and rebuilding these each time cost
    about a sixth of a MovieLens training. The history is not copied, so a caller must
    not change it in place between two scorings (nothing here does).
    """
    items = catalogue["item_id"].to_numpy()
    if _LAST:
        ref, item_ids, cat_ids, cached = _LAST[0]
        if ref() is history and item_ids == encoder.item_ids and np.array_equal(cat_ids, items):
            return cached
    result = (encoder.recent_counts(history, catalogue), item_prior(history, catalogue), HistoryBags.build(encoder, history))
    _LAST[:] = [(weakref.ref(history), encoder.item_ids, items, result)]
    return result


def chunk_scorer(recommender: Any, history: pd.DataFrame | None) -> Scorer:
    """A function scoring any users against ``recommender``'s catalogue, as ``score(users, history)`` does."""
    if not isinstance(recommender, Recommender):
        return lambda users: recommender.score(users, history)
    model = recommender
    model.eval()
    enc = model.encoder
    if history is not None:
        recent, prior, bags = history_side(enc, history, model.catalogue)
    else:
        recent, prior, bags = model.recent, getattr(model, "prior_features", None), None
    features = torch.from_numpy(prior) if prior is not None else None
    towers = model.model
    with torch.no_grad():
        items_t = towers.item_embedding(enc.item_kjt(model.catalogue, recent)).T
        prior_module = getattr(towers, "prior", None)
        prior_scores = prior_module(features) if features is not None and prior_module is not None else None
    blend = getattr(model, "blend", 0.0)

    @torch.no_grad()
    def score(users: pd.DataFrame) -> torch.Tensor:
        taken = bags.take(users["user_id"].to_numpy()) if bags is not None else None
        scores = towers.user_embedding(enc.user_kjt(users, taken)) @ items_t
        if prior_scores is not None:
            scores = scores + prior_scores
        if blend == 0.0 or features is None:
            return scores
        return (1.0 - blend) * scores + blend * features[:, RECENT_PRIOR]

    return score
