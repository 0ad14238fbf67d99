"""Two-tower retrieval model on TorchRec embedding tables.

The model is a pure ``nn.Module`` that takes KeyedJaggedTensors: a user tower over
user id and profile features, an item tower over item id, genres (a multi-valued,
jagged feature) and release decade. ``TwoTowerTrainTask`` adds the loss: a full
softmax over the whole catalogue, which is affordable for catalogues of a few
thousand items and avoids the bias of sampled negatives. Beside the towers' dot
product the score has an additive, time-aware item prior: a learnt weighting of each
item's recent and all-time log shares (``item_prior``), counted strictly before the
scoring time, so a user the towers know nothing about (a cold user) is ranked by what
is watched now. ``FeatureEncoder`` turns the data stage's columns into table rows; it
travels with the model so that a registered version can score new data in another
process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.data.features import HISTORY_CAP

Jagged = tuple[np.ndarray, np.ndarray]  # (values, lengths) of one jagged feature
USER_FEATURES = ("user_id", "user_gender", "user_age", "user_occupation", "user_history")
ITEM_FEATURES = ("item_id", "item_genre", "item_decade", "item_popularity")
POPULARITY_DAYS = 30  # recent popularity: interactions in the last 30 days before scoring
POPULARITY_BUCKETS = 16  # log2 buckets of that count
AGE_EDGES = (1, 18, 25, 35, 45, 50, 56)  # the MovieLens age groups; 0 = unknown
FEATURE_SERVICE = "two_tower_v1"  # the Feast feature service whose features this model reads
ENCODED_USER_COLUMNS = ["user_id", "user_gender", "user_age", "user_occupation"]  # the window columns it encodes users from
PRIOR_DAYS = (7, 28, None)  # windows of the item prior's log shares, in days; None: all history before the time
# The prior's starting weights: the 28-day log share (recent popularity, the strongest baseline on a temporal
# split) at weight 1, so the softmax starts as the 28-day shares; the all-time share only breaks its ties.
PRIOR_INIT = (0.0, 1.0, 1e-3)
PRIOR_SMOOTHING = 1.0  # pseudo-count of every item in each window's log share
RECENT_PRIOR = PRIOR_DAYS.index(28)  # the prior column a serving blend mixes in: the 28-day log share


def _vocab(values: pd.Series) -> tuple:
    return tuple(sorted(pd.unique(values.astype(str))))


@dataclass(frozen=True)
class FeatureEncoder:
    """Maps raw feature values to embedding rows; row 0 is reserved for unknown values.

    Built once from the training window and the item catalogue, then frozen into the
    checkpoint, so a user or item first seen after training falls into row 0 rather
    than onto another entity's row.

    Example:
        >>> enc = FeatureEncoder.fit(users=pd.DataFrame({"user_id": [7], "user_gender": ["F"],
        ...     "user_age": [25], "user_occupation": ["writer"]}),
        ...     items=pd.DataFrame({"item_id": [3], "item_genres": ["Drama|War"], "item_release_year": [1995]}))
        >>> enc.num_embeddings["user_id"], enc.num_embeddings["item_genre"]
        (2, 3)
    """

    user_ids: tuple = ()
    item_ids: tuple = ()
    genders: tuple = ()
    occupations: tuple = ()
    genres: tuple = ()
    decades: tuple = field(default=tuple(range(1900, 2030, 10)))

    @classmethod
    def fit(cls, users: pd.DataFrame, items: pd.DataFrame) -> FeatureEncoder:
        genres = items["item_genres"].fillna("").str.split("|").explode()
        return cls(
            user_ids=tuple(sorted(int(u) for u in pd.unique(users["user_id"]))),
            item_ids=tuple(sorted(int(i) for i in pd.unique(items["item_id"]))),
            genders=_vocab(users["user_gender"]),
            occupations=_vocab(users["user_occupation"]),
            genres=tuple(sorted(g for g in pd.unique(genres.dropna()) if g)),
        )

    @property
    def num_embeddings(self) -> dict[str, int]:
        return {
            "user_id": len(self.user_ids) + 1,
            "user_gender": len(self.genders) + 1,
            "user_age": len(AGE_EDGES) + 1,
            "user_occupation": len(self.occupations) + 1,
            "user_history": len(self.item_ids) + 1,
            "item_id": len(self.item_ids) + 1,
            "item_genre": len(self.genres) + 1,
            "item_decade": len(self.decades) + 1,
            "item_popularity": POPULARITY_BUCKETS,
        }

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoder:
        return cls(**{k: tuple(v) for k, v in d.items()})

    @cached_property
    def _indices(self) -> dict[str, pd.Index]:
        """Each vocabulary as a pandas Index, built on first use: a server encodes every request with them."""
        return {}

    def _lookup(self, vocab: str, values: pd.Series) -> np.ndarray:
        index = self._indices.get(vocab)
        if index is None:
            index = self._indices[vocab] = pd.Index(getattr(self, vocab))
        rows = index.get_indexer(values.to_numpy())
        return np.where(rows >= 0, rows + 1, 0).astype(np.int64)

    def user_kjt(self, users: pd.DataFrame, history: Jagged | None = None) -> KeyedJaggedTensor:
        """One row per user (columns ``user_id, user_gender, user_age, user_occupation``).

        Args:
            users: profile rows.
            history: per user, the catalogue rows of items interacted with before
                (a jagged ``(values, lengths)`` pair); empty bags when None.
        """
        return self.user_kjt_encoded(self.encode_users(users), history)

    def encode_users(self, users: pd.DataFrame) -> np.ndarray:
        """``[n, 4]`` table rows of the single-valued user features (encode once, batch many times)."""
        ages = np.searchsorted(np.asarray(AGE_EDGES), users["user_age"].to_numpy(), side="right")
        return np.stack(
            [
                self._lookup("user_ids", users["user_id"].astype(int)),
                self._lookup("genders", users["user_gender"].astype(str)),
                ages.astype(np.int64),
                self._lookup("occupations", users["user_occupation"].astype(str)),
            ],
            axis=1,
        )

    @staticmethod
    def user_kjt_encoded(encoded: np.ndarray, history: Jagged | None = None) -> KeyedJaggedTensor:
        """The user KJT from ``encode_users`` rows and an optional history bag."""
        n = len(encoded)
        hist_values, hist_lengths = history if history is not None else (np.zeros(0, np.int64), np.zeros(n, np.int64))
        return KeyedJaggedTensor(
            keys=list(USER_FEATURES),
            values=torch.from_numpy(np.concatenate([encoded.T.reshape(-1), hist_values + 1]).astype(np.int64)),
            lengths=torch.from_numpy(np.concatenate([np.ones(encoded.size, np.int64), hist_lengths])),
        )

    def histories(self, interactions: pd.DataFrame, user_ids: pd.Series | np.ndarray) -> Jagged:
        """The most recent ``HISTORY_CAP`` catalogue rows of each user, as a jagged pair."""
        rows = self.item_rows(interactions["item_id"])
        frame = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(), "row": rows,
                              "ts": interactions["timestamp"].to_numpy()})
        frame = frame[frame["row"] >= 0].sort_values(["user_id", "ts"], kind="stable")
        recent = frame.groupby("user_id").tail(HISTORY_CAP)
        groups = recent.groupby("user_id")["row"].apply(np.asarray)
        bags = [groups.get(u, np.zeros(0, np.int64)) for u in np.asarray(user_ids)]
        lengths = np.array([len(b) for b in bags], dtype=np.int64)
        values = np.concatenate(bags).astype(np.int64) if lengths.sum() else np.zeros(0, np.int64)
        return values, lengths

    def item_kjt(self, items: pd.DataFrame, recent: np.ndarray | None = None) -> KeyedJaggedTensor:
        """One row per item (columns ``item_id, item_genres, item_release_year``); genres are jagged.

        ``recent`` is each item's interaction count in the last ``POPULARITY_DAYS``
        days (see ``recent_counts``), bucketed on a log scale; zeros when None.
        """
        ids = self._lookup("item_ids", items["item_id"].astype(int))
        genre_lists = items["item_genres"].fillna("").str.split("|")
        genre_index = {g: i + 1 for i, g in enumerate(self.genres)}
        genre_rows = [[genre_index.get(g, 0) for g in gs if g] or [0] for gs in genre_lists]
        decades = self._lookup("decades", (items["item_release_year"].astype(int) // 10) * 10)
        n = len(items)
        counts = np.zeros(n) if recent is None else np.asarray(recent, dtype=np.float64)
        popularity = np.minimum(np.floor(np.log2(1 + counts)), POPULARITY_BUCKETS - 1).astype(np.int64)
        values = np.concatenate([ids, np.concatenate(genre_rows) if n else np.zeros(0, np.int64), decades, popularity])
        lengths = np.concatenate([np.ones(n, np.int64), [len(g) for g in genre_rows], np.ones(2 * n, np.int64)])
        return KeyedJaggedTensor(
            keys=list(ITEM_FEATURES),
            values=torch.from_numpy(values.astype(np.int64)),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
        )

    def recent_counts(self, interactions: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
        """Interactions of each item in the ``POPULARITY_DAYS`` before the newest interaction.

        Recent popularity carries most of the signal of a temporal split (what is
        watched now), which an id embedding trained on all history cannot see.
        """
        if interactions.empty:
            return np.zeros(len(items))
        since = interactions["timestamp"].max() - pd.Timedelta(days=POPULARITY_DAYS)
        recent = interactions.loc[interactions["timestamp"] > since, "item_id"].value_counts()
        return recent.reindex(items["item_id"].to_numpy()).fillna(0).to_numpy()

    def item_rows(self, item_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Position of each item in the sorted catalogue (-1 when unknown)."""
        return pd.Index(self.item_ids).get_indexer(np.asarray(item_ids, dtype=np.int64))


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
