"""Warm start from the champion: its weights carried into tables sized for the new data.

A new window brings users and items the champion has never seen, and the encoder fit
on it numbers every id afresh (rows follow the sorted ids, so one new user moves the
rows of all later ones). The warm model is built for the new encoder and then filled
from the champion by raw id, not by row: every id the champion knows gets its row
back bit for bit, ids it does not know keep the initialisation of a fresh model, and
the dense tower layers are copied whole.

What the new encoder holds (``union_encoder``):

- users, genders, occupations, genres and decades: the union of the champion's and
  the new data's. A warm start trains on a short recent span, so most users are absent
  from it; a user who returns later still finds their own row, not the unknown row.
- items: the new catalogue's, exactly. The encoder's items are the catalogue the model
  ranks (training labels are catalogue rows), so an item that left the catalogue is
  not kept rankable; its row is dropped. The data stage's catalogue only grows (every
  item of the item profile), so in the pipeline nothing is dropped, and ``calibrate``
  counts removed items as a changed catalogue, which retrains from scratch.

Row 0 of every table (unknown values) is carried over too: it is what the champion
learnt for ids it had not seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from recsys_retrain.errors import PipelineError
from recsys_retrain.model import AGE_EDGES, POPULARITY_BUCKETS, FeatureEncoder, TwoTower, build_two_tower


def union_encoder(champion: FeatureEncoder, new: FeatureEncoder) -> FeatureEncoder:
    """The encoder of a warm-started model: the champion's vocabularies joined with the new data's.

    Args:
        champion: the encoder the champion was trained with.
        new: the encoder fit on the new span and the current catalogue.

    Returns:
        Users, genders, occupations, genres and decades of either (sorted, as ``fit``
        sorts them); the items of ``new`` alone (see the module docstring).

    Example:
        >>> old = FeatureEncoder(user_ids=(1, 5), item_ids=(10,), genders=("F",))
        >>> union_encoder(old, FeatureEncoder(user_ids=(3,), item_ids=(10, 11), genders=("M",))).user_ids
        (1, 3, 5)
    """

    def union(a: tuple, b: tuple) -> tuple:
        return tuple(sorted(set(a) | set(b)))

    return FeatureEncoder(
        user_ids=union(champion.user_ids, new.user_ids),
        item_ids=new.item_ids,
        genders=union(champion.genders, new.genders),
        occupations=union(champion.occupations, new.occupations),
        genres=union(champion.genres, new.genres),
        decades=union(champion.decades, new.decades),
        item_genres=new.item_genres,
    )


def row_map(old: Sequence, new: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ids both vocabularies hold: ``(rows in old, rows in new)``, row 0 (unknown) first.

    Rows are 1 + the id's position in its vocabulary, as ``FeatureEncoder`` numbers them.

    Example:
        >>> row_map((10, 20, 30), (5, 20, 30))
        (array([0, 2, 3]), array([0, 2, 3]))
        >>> row_map((10, 20), (20, 25))
        (array([0, 2]), array([0, 1]))
    """
    position = pd.Index(list(new)).get_indexer(list(old)) if len(old) else np.zeros(0, np.int64)
    kept = np.flatnonzero(position >= 0)
    return np.concatenate([[0], kept + 1]).astype(np.int64), np.concatenate([[0], position[kept] + 1]).astype(np.int64)


def table_vocabularies(encoder: FeatureEncoder) -> dict[str, Sequence]:
    """The vocabulary behind each table of the model, by table name (fixed-size tables by their bucket edges)."""
    return {
        "t_user_id": encoder.user_ids,
        "t_user_gender": encoder.genders,
        "t_user_age": AGE_EDGES,
        "t_user_occupation": encoder.occupations,
        "t_user_history": encoder.item_ids,
        "t_user_genres": encoder.genres,
        "t_item_id": encoder.item_ids,
        "t_item_genre": encoder.genres,
        "t_item_decade": encoder.decades,
        "t_item_popularity": tuple(range(1, POPULARITY_BUCKETS)),  # bucket 0 is row 0
    }


def embedding_dim(model: TwoTower) -> int:
    """The embedding size of a two-tower model (all its tables share it)."""
    return model.user_ebc.embedding_bag_configs()[0].embedding_dim


@torch.no_grad()
def warm_start(champion: TwoTower, champion_encoder: FeatureEncoder, encoder: FeatureEncoder) -> TwoTower:
    """A two-tower model for ``encoder`` that starts from the champion's weights.

    Builds a fresh model for ``encoder`` (under the caller's torch seed), then copies
    into it every embedding row whose id ``champion_encoder`` also holds (matched by
    raw id), and the dense layers (both towers' and the item prior's weights). Rows of ids new to the champion keep their
    fresh initialisation, as do a table or a tower whose inputs the champion predates; champion ids missing from ``encoder`` are dropped (pass
    ``union_encoder(champion_encoder, new)`` to keep every user).

    Args:
        champion: the champion's towers, on CPU (``Recommender.model``).
        champion_encoder: the encoder the champion was trained with (``Recommender.encoder``).
        encoder: the encoder of the new model.

    Returns:
        A plain (unsharded) TwoTower on CPU, with the champion's embedding size.

    Example:
        >>> old = FeatureEncoder(user_ids=(1, 5), item_ids=(10,), genders=("F",), occupations=("x",), genres=("Drama",))
        >>> champion = build_two_tower(old, dim=4)
        >>> new = union_encoder(old, FeatureEncoder(user_ids=(3,), item_ids=(10, 11), genders=("F",),
        ...                                         occupations=("x",), genres=("Drama",)))
        >>> warm = warm_start(champion, old, new)
        >>> bool(torch.equal(warm.user_ebc.embedding_bags["t_user_id"].weight[3],
        ...                  champion.user_ebc.embedding_bags["t_user_id"].weight[2]))  # user 5: row 2 -> row 3
        True
    """
    model = build_two_tower(encoder, embedding_dim(champion), "cpu")
    old_vocab, new_vocab = table_vocabularies(champion_encoder), table_vocabularies(encoder)
    for ebc, old_ebc in ((model.user_ebc, champion.user_ebc), (model.item_ebc, champion.item_ebc)):
        for name, bag in ebc.embedding_bags.items():
            if name not in old_ebc.embedding_bags:  # a table the champion's model predates starts afresh
                continue
            old_rows, new_rows = row_map(old_vocab[name], new_vocab[name])
            bag.weight[torch.from_numpy(new_rows)] = old_ebc.embedding_bags[name].weight[torch.from_numpy(old_rows)]
    for proj, old_proj in ((model.user_proj, champion.user_proj), (model.item_proj, champion.item_proj)):
        old_state = old_proj.state_dict()
        if all(old_state[k].shape == v.shape for k, v in proj.state_dict().items()):  # else: other inputs, a fresh tower
            proj.load_state_dict(old_state)
    if hasattr(champion, "prior"):  # a champion registered before the item prior starts it afresh
        model.prior.load_state_dict(champion.prior.state_dict())
    return model


def check_embedding_dim(champion: TwoTower, dim: int) -> None:
    """Raises a one-line PipelineError when the champion's tables are not ``dim`` wide (a warm start cannot resize them)."""
    have = embedding_dim(champion)
    if have != dim:
        raise PipelineError(
            f"cannot warm-start from the champion: its embeddings are {have} wide, this run's settings ask for {dim}; "
            "train from scratch or set train.embedding_dim to the champion's"
        )
