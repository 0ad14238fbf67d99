"""Feature encoding: the data stage's columns as embedding-table rows and KeyedJaggedTensors.

``FeatureEncoder`` maps raw ids and categories to table rows (row 0: unknown) and builds
the towers' inputs: one KJT row per user (profile, history bag of earlier items, and the
genres of those items) and one per item. It is fit on the training window and the
catalogue, frozen into the checkpoint, and travels with the model (``recsys_retrain.model``),
so that a registered version encodes new data in another process as it did in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.data.features import HISTORY_CAP

Jagged = tuple[np.ndarray, np.ndarray]  # (values, lengths) of one jagged feature
USER_FEATURES = ("user_id", "user_gender", "user_age", "user_occupation", "user_history", "user_genres")
ITEM_FEATURES = ("item_id", "item_genre", "item_decade", "item_popularity")
POPULARITY_DAYS = 30  # recent popularity: interactions in the last 30 days before scoring
POPULARITY_BUCKETS = 16  # log2 buckets of that count
AGE_EDGES = (1, 18, 25, 35, 45, 50, 56)  # the MovieLens age groups; 0 = unknown
ENCODED_USER_COLUMNS = ["user_id", "user_gender", "user_age", "user_occupation"]  # the window columns it encodes users from


def _vocab(values: pd.Series) -> tuple:
    return tuple(sorted(pd.unique(values.astype(str))))


@dataclass(frozen=True)
class FeatureEncoder:
    """Maps raw feature values to embedding rows; row 0 is reserved for unknown values.

    Built once from the training window and the item catalogue, then frozen into the
    checkpoint, so a user or item first seen after training falls into row 0 rather
    than onto another entity's row.

    A user's history enters the user tower twice: as a bag of the items themselves
    (``user_history``, one table row per item) and as a bag of their genres
    (``user_genres``, over the genre vocabulary). The item bag learns what each item
    says about a taste only from that item's own examples, so a tail item, or any item
    after one epoch over a large catalogue, says next to nothing; the genre bag is
    shared by every item of a genre and learns a user's leaning from the first epoch.

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
    item_genres: tuple = ()  # per item of ``item_ids``, its "|"-joined genres (the ``user_genres`` bag reads them)

    @classmethod
    def fit(cls, users: pd.DataFrame, items: pd.DataFrame) -> FeatureEncoder:
        genres = items["item_genres"].fillna("").str.split("|").explode()
        item_ids = tuple(sorted(int(i) for i in pd.unique(items["item_id"])))
        by_item = items.drop_duplicates("item_id").set_index("item_id")["item_genres"]
        return cls(
            user_ids=tuple(sorted(int(u) for u in pd.unique(users["user_id"]))),
            item_ids=item_ids,
            genders=_vocab(users["user_gender"]),
            occupations=_vocab(users["user_occupation"]),
            genres=tuple(sorted(g for g in pd.unique(genres.dropna()) if g)),
            item_genres=tuple(by_item.reindex(list(item_ids)).fillna("").astype(str)),
        )

    @property
    def num_embeddings(self) -> dict[str, int]:
        return {
            "user_id": len(self.user_ids) + 1,
            "user_gender": len(self.genders) + 1,
            "user_age": len(AGE_EDGES) + 1,
            "user_occupation": len(self.occupations) + 1,
            "user_history": len(self.item_ids) + 1,
            "user_genres": len(self.genres) + 1,
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

    @cached_property
    def _item_genre_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, rows)``: the genre table rows of catalogue row ``r`` are ``rows[offsets[r]:offsets[r + 1]]``.

        Rows of ``item_ids`` past ``item_genres`` (an encoder saved before it) have none.
        """
        index = {g: i + 1 for i, g in enumerate(self.genres)}
        per_item = [[index[g] for g in genres.split("|") if g in index] for genres in self.item_genres]
        per_item += [[]] * (len(self.item_ids) - len(per_item))
        counts = np.array([len(r) for r in per_item], dtype=np.int64)
        rows = np.fromiter((g for r in per_item for g in r), dtype=np.int64, count=int(counts.sum()))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows

    def genre_bags(self, history: Jagged) -> Jagged:
        """The genres of each user's history items, as genre table rows: the ``user_genres`` bag.

        Args:
            history: per user, catalogue rows (a jagged ``(values, lengths)`` pair).

        Returns:
            Per user, the genre rows of those items, item by item (an item of several genres adds each).

        Example:
            >>> enc = FeatureEncoder(item_ids=(3, 5), genres=("Drama", "War"), item_genres=("Drama|War", "War"))
            >>> [a.tolist() for a in enc.genre_bags((np.array([0, 1, 1]), np.array([1, 2])))]
            [[1, 2, 2, 2], [2, 2]]
        """
        values, lengths = history
        offsets, rows = self._item_genre_rows
        counts = offsets[values + 1] - offsets[values]
        owner = np.repeat(np.arange(len(lengths)), lengths)
        bag_lengths = np.bincount(owner, weights=counts, minlength=len(lengths)).astype(np.int64)
        total = int(counts.sum())
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows[np.repeat(offsets[values], counts) + within], bag_lengths

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

    def user_kjt_encoded(self, encoded: np.ndarray, history: Jagged | None = None) -> KeyedJaggedTensor:
        """The user KJT from ``encode_users`` rows and an optional history bag (and the genre bag it gives)."""
        n = len(encoded)
        hist_values, hist_lengths = history if history is not None else (np.zeros(0, np.int64), np.zeros(n, np.int64))
        genre_values, genre_lengths = self.genre_bags((np.asarray(hist_values, np.int64), np.asarray(hist_lengths)))
        return KeyedJaggedTensor(
            keys=list(USER_FEATURES),
            values=torch.from_numpy(np.concatenate([encoded.T.reshape(-1), hist_values + 1, genre_values]).astype(np.int64)),
            lengths=torch.from_numpy(np.concatenate([np.ones(encoded.size, np.int64), hist_lengths, genre_lengths])),
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
