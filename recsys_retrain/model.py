"""Two-tower retrieval model on TorchRec embedding tables.

The model is a pure ``nn.Module`` that takes KeyedJaggedTensors: a user tower over
user id, profile features and two bags of the user's earlier items (the items, and
their genres), an item tower over item id, genres (a multi-valued, jagged feature),
release decade and recent popularity. ``TwoTowerTrainTask`` adds the loss: a full
softmax over the whole catalogue, which is affordable for catalogues of a few
thousand items and avoids the bias of sampled negatives. Beside the towers' dot
product the score has an additive, time-aware item prior: a learnt weighting of each
item's recent and all-time log shares (``item_prior``), counted strictly before the
scoring time, so a user the towers know nothing about (a cold user) is ranked by what
is watched now. ``FeatureEncoder`` (``recsys_retrain.encoder``, re-exported here) turns
the data stage's columns into table rows; it travels with the model so that a registered
version can score new data in another process.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.encoder import (  # re-exported: the model's inputs are named here too
    AGE_EDGES,
    ENCODED_USER_COLUMNS,
    ITEM_FEATURES,
    POPULARITY_BUCKETS,
    POPULARITY_DAYS,
    USER_FEATURES,
    FeatureEncoder,
    Jagged,
)

FEATURE_SERVICE = "two_tower_v1"  # the Feast feature service whose features this model reads
PRIOR_DAYS = (7, 28, None)  # windows of the item prior's log shares, in days; None: all history before the time
# The prior's starting weights: the 28-day log share (recent popularity, the strongest baseline on a temporal
# split) at weight 1, so the softmax starts as the 28-day shares; the all-time share only breaks its ties.
PRIOR_INIT = (0.0, 1.0, 1e-3)
PRIOR_SMOOTHING = 1.0  # pseudo-count of every item in each window's log share
RECENT_PRIOR = PRIOR_DAYS.index(28)  # the prior column a serving blend mixes in: the 28-day log share
__all__ = ["AGE_EDGES", "ENCODED_USER_COLUMNS", "ITEM_FEATURES", "POPULARITY_BUCKETS", "POPULARITY_DAYS", "USER_FEATURES",
           "FeatureEncoder", "Jagged", "ItemPrior", "Recommender", "TwoTower", "TwoTowerTrainTask", "build_two_tower",
           "embedding_tables", "item_prior", "user_spread"]


def item_prior(interactions: pd.DataFrame, items: pd.DataFrame, end: pd.Timestamp | None = None) -> np.ndarray:
    """Each item's log share of the interactions in each ``PRIOR_DAYS`` window before ``end``.

    The share of item i in a window is ``(count_i + a) / (total + a * N)`` with ``a =
    PRIOR_SMOOTHING``: an item never seen in the window keeps a finite share below every
    seen one, and a log share is what a softmax turns back into the share itself, so a
    prior weight of 1 on one window makes the untrained model's softmax that window's
    popularity. Only interactions before ``end`` count: a training example of week t
    sees the shares as they stood when week t began, as serving would.

    Args:
        interactions: ``item_id``, ``timestamp``.
        items: the catalogue (``item_id``), one row per output row.
        end: the scoring time; windows are ``(end - days, end)`` and interactions at or
            after it are ignored. None: just after the newest interaction, so the
            windows end with it, as ``RecentPopular``'s does.

    Returns:
        ``[N, len(PRIOR_DAYS)]`` float32 log shares.

    Example:
        >>> t = pd.to_datetime(["2000-01-01", "2000-01-20", "2000-01-21"], utc=True)
        >>> seen = pd.DataFrame({"item_id": [1, 2, 2], "timestamp": t})
        >>> prior = item_prior(seen, pd.DataFrame({"item_id": [1, 2, 3]}))
        >>> np.exp(prior[:, 0]).astype(float).round(3).tolist()  # the 7-day window misses item 1's January 1
        [0.2, 0.6, 0.2]
    """
    ids = items["item_id"].to_numpy()
    if interactions.empty:
        return np.full((len(ids), len(PRIOR_DAYS)), -np.log(max(len(ids), 1)), dtype=np.float32)
    stamps = interactions["timestamp"]
    end = stamps.max() + pd.Timedelta(microseconds=1) if end is None else end
    before = interactions[stamps < end]
    columns = []
    for days in PRIOR_DAYS:
        window = before if days is None else before[before["timestamp"] > end - pd.Timedelta(days=days)]
        counts = window["item_id"].value_counts().reindex(ids).fillna(0).to_numpy(np.float64)
        columns.append(np.log((counts + PRIOR_SMOOTHING) / (len(window) + PRIOR_SMOOTHING * len(ids))))
    return np.stack(columns, axis=1).astype(np.float32)


class ItemPrior(nn.Module):
    """``prior(i, t) = w · f(i, t)``: a learnt weighting of the ``item_prior`` features.

    A dense parameter of ``len(PRIOR_DAYS)`` weights, trained with the tower layers,
    starting at ``PRIOR_INIT`` (the model starts as recent popularity).

    Example:
        >>> ItemPrior()(torch.tensor([[-1.0, -2.0, -3.0]]))
        tensor([-2.0030], grad_fn=<SumBackward1>)
    """

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(PRIOR_INIT, dtype=torch.float32, device=device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Args: ``[N, P]`` features. Returns: ``[N]`` prior scores, in float32.

        A product and a sum rather than a matmul, which bf16 autocast would round: log
        shares near -10 in bf16 are 0.06 apart, coarser than the gaps of the head.
        """
        return (features.float() * self.weight.float()).sum(dim=-1)


def embedding_tables(encoder: FeatureEncoder, dim: int) -> tuple[list[EmbeddingBagConfig], list[EmbeddingBagConfig]]:
    """Table configs of the user and the item tower, one table per feature."""

    def table(feature: str) -> EmbeddingBagConfig:
        return EmbeddingBagConfig(
            name=f"t_{feature}",
            embedding_dim=dim,
            num_embeddings=encoder.num_embeddings[feature],
            feature_names=[feature],
            pooling=PoolingType.MEAN,
        )

    return [table(f) for f in USER_FEATURES], [table(f) for f in ITEM_FEATURES]


class TwoTower(nn.Module):
    """User and item towers whose dot product scores a (user, item) pair.

    Args:
        user_ebc: EmbeddingBagCollection over ``USER_FEATURES``.
        item_ebc: EmbeddingBagCollection over ``ITEM_FEATURES``.
        dim: output size of both towers.
        device: where the dense layers live (the tables may be on ``meta`` until sharded).

    Example:
        >>> enc = FeatureEncoder(user_ids=(1,), item_ids=(1, 2), genders=("F",), occupations=("x",), genres=("Drama",))
        >>> model = build_two_tower(enc, dim=8)
        >>> users = pd.DataFrame({"user_id": [1], "user_gender": ["F"], "user_age": [30], "user_occupation": ["x"]})
        >>> items = pd.DataFrame({"item_id": [1, 2], "item_genres": ["Drama", ""], "item_release_year": [1990, 0]})
        >>> model(enc.user_kjt(users), enc.item_kjt(items), torch.zeros(2, len(PRIOR_DAYS))).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        user_ebc: EmbeddingBagCollection,
        item_ebc: EmbeddingBagCollection,
        dim: int,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.user_ebc = user_ebc
        self.item_ebc = item_ebc
        self.user_proj = _tower(len(USER_FEATURES) * dim, dim, device)
        self.item_proj = _tower(len(ITEM_FEATURES) * dim, dim, device)
        self.prior = ItemPrior(device)
        # Squared norms of the gradient reaching the pooled embeddings in the last
        # backward: the fused optimizer consumes the table gradients inside the
        # kernel, so this is where a scheduler can still see the embedding signal.
        self.pooled_grad_sq: dict[str, float] = {}

    def user_embedding(self, users: KeyedJaggedTensor) -> torch.Tensor:
        """Returns: ``[B, dim]`` user vectors."""
        return self.user_proj(self._watch("user", self.user_ebc(users).values()))

    def item_embedding(self, items: KeyedJaggedTensor) -> torch.Tensor:
        """Returns: ``[N, dim]`` item vectors."""
        return self.item_proj(self._watch("item", self.item_ebc(items).values()))

    def _watch(self, name: str, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.requires_grad:
            pooled.register_hook(lambda grad: self.pooled_grad_sq.__setitem__(name, float(grad.float().pow(2).sum())))
        return pooled

    def forward(
        self, users: KeyedJaggedTensor, items: KeyedJaggedTensor, item_prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of every user against every item: ``<user(u), item(i)> + prior(i, t)``.

        Args:
            users: ``B`` users (``USER_FEATURES``).
            items: ``N`` items (``ITEM_FEATURES``).
            item_prior: ``[N, len(PRIOR_DAYS)]`` ``item_prior`` features at the scoring
                time; None: the dot product alone.

        Returns:
            ``[B, N]`` scores.
        """
        scores = self.user_embedding(users) @ self.item_embedding(items).T
        prior = getattr(self, "prior", None)  # a TwoTower pickled before the prior has none
        if item_prior is None or prior is None:
            return scores
        return scores + prior(item_prior)  # float32 even when the towers ran under bf16 autocast


def user_spread(model: TwoTower, users: KeyedJaggedTensor) -> float:
    """How far the user tower tells users apart: the norm of its vectors' per-dimension standard
    deviation over the norm of their mean vector, for the users ``users`` holds.

    0 when every user gets the same vector: a tower whose ReLUs have all died (too high a
    rate) ranks every user alike, and the prior then carries its validation to about
    recent popularity's, close enough for the rate probe to count it a tie with a
    tower that learnt.

    Args:
        model: the towers.
        users: at least two users (``USER_FEATURES``).

    Returns:
        The relative spread, 0 for identical (or all-zero) vectors.

    Example:
        >>> enc = FeatureEncoder(user_ids=(1, 2), item_ids=(1,), genders=("F", "M"), occupations=("x",), genres=("Drama",))
        >>> users = pd.DataFrame({"user_id": [1, 2], "user_gender": ["F", "M"], "user_age": [30, 40],
        ...                       "user_occupation": ["x", "x"]})
        >>> model = build_two_tower(enc, dim=8)
        >>> user_spread(model, enc.user_kjt(users)) > 0
        True
        >>> _ = torch.nn.init.zeros_(model.user_proj[2].weight)  # every user gets the output bias alone
        >>> user_spread(model, enc.user_kjt(users))
        0.0
    """
    with torch.no_grad():
        vectors = model.user_embedding(users).float()
    mean = float(vectors.mean(0).norm())
    spread = float(vectors.std(0).norm()) if len(vectors) > 1 else 0.0
    return spread / mean if mean > 0 else (math.inf if spread > 0 else 0.0)


def _tower(in_dim: int, out_dim: int, device: torch.device | None) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, 2 * out_dim, device=device),
        nn.ReLU(),
        nn.Linear(2 * out_dim, out_dim, device=device),
    )


def build_two_tower(encoder: FeatureEncoder, dim: int, device: torch.device | str = "cpu") -> TwoTower:
    """A TwoTower whose tables live on ``device`` (``"meta"`` before sharding)."""
    user_tables, item_tables = embedding_tables(encoder, dim)
    dense_device = torch.device("cpu") if str(device) == "meta" else torch.device(device)
    return TwoTower(
        EmbeddingBagCollection(tables=user_tables, device=torch.device(device)),
        EmbeddingBagCollection(tables=item_tables, device=torch.device(device)),
        dim,
        device=dense_device,
    )


class TwoTowerTrainTask(nn.Module):
    """Adds the loss: softmax over the whole catalogue, target = the interacted item.

    Args:
        model: the TwoTower to train.
        temperature: divides the scores before the softmax.

    Returns from forward: ``(loss, (loss, logits, labels))`` with the outputs detached,
    the convention of TorchRec's train tasks.
    """

    def __init__(self, model: TwoTower, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(
        self,
        users: KeyedJaggedTensor,
        catalogue: KeyedJaggedTensor,
        labels: torch.Tensor,
        item_prior: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(users, catalogue, item_prior) / self.temperature
        if log_q is not None:  # a sampled catalogue: each candidate's log inclusion chance (recsys_retrain.train.sampled)
            logits = logits - log_q
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, (loss.detach(), logits.detach(), labels.detach())


class Recommender(nn.Module):
    """What the registry stores: the trained towers, the encoder and the catalogue's features.

    ``score(users)`` ranks the catalogue it was trained with; this is the object the
    gate and the monitor load back from MLflow to score champion and challenger on
    the same holdout.

    Args:
        model: the trained towers and prior weights.
        encoder: the encoder it was trained with.
        catalogue: the items it ranks.
        recent: each item's recent count at the end of training (the tower's popularity
            bucket when ``score`` is given no history); zeros when None.
        prior: ``item_prior`` features at the end of training, for ``score`` without
            history; every item alike (no prior ordering) when None.
        blend: share of the 28-day log share in the served score, ``(1 - blend) * model +
            blend * log share``; fit on a validation tail (``recsys_retrain.train.blend``),
            because on a temporal split the towers' score, fit to the past, can rank the
            next weeks worse than recent popularity alone. 0: the model alone.
    """

    def __init__(
        self,
        model: TwoTower,
        encoder: FeatureEncoder,
        catalogue: pd.DataFrame,
        recent: np.ndarray | None = None,
        prior: np.ndarray | None = None,
        blend: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be within [0, 1], got {blend}")
        self.model = model
        self.encoder_state = encoder.to_dict()
        self.catalogue = catalogue.reset_index(drop=True)[["item_id", "item_genres", "item_release_year"]]
        self.recent = np.zeros(len(self.catalogue)) if recent is None else np.asarray(recent)
        empty = item_prior(pd.DataFrame(), self.catalogue)
        self.prior_features = empty if prior is None else np.asarray(prior, dtype=np.float32)
        self.blend = float(blend)

    @property
    def encoder(self) -> FeatureEncoder:
        return FeatureEncoder.from_dict(self.encoder_state)

    @torch.no_grad()
    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        """Scores the whole catalogue for each user.

        Args:
            users: one row per user with profile columns.
            history: interactions before the scoring time; each user's recent items
                feed the history bag of the user tower, and the items' counts in it the
                popularity bucket and the prior (when None: empty bags, and the counts
                stored at the end of training).

        Returns:
            ``[U, N]`` scores over ``self.catalogue``, blended with the 28-day log share by ``blend``.
        """
        self.eval()
        enc = self.encoder
        bags = enc.histories(history, users["user_id"]) if history is not None else None
        recent = enc.recent_counts(history, self.catalogue) if history is not None else self.recent
        stored = getattr(self, "prior_features", None)  # a Recommender pickled before the prior has none
        prior = item_prior(history, self.catalogue) if history is not None else stored
        features = torch.from_numpy(prior) if prior is not None else None
        scores = self.model(enc.user_kjt(users, bags), enc.item_kjt(self.catalogue, recent), features)
        blend = getattr(self, "blend", 0.0)  # a Recommender pickled before the blend has none
        if blend == 0.0 or features is None:
            return scores
        return (1.0 - blend) * scores + blend * features[:, RECENT_PRIOR]

    def forward(
        self, users: KeyedJaggedTensor, items: KeyedJaggedTensor, item_prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(users, items, item_prior)
