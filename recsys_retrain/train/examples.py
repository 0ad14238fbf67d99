"""Training examples from interactions, their shuffled per-period batches, and catalogue snapshots.

An example is one interaction with a catalogue item, with the user's earlier items as
its history. Batches are drawn per week (a *period*), so each batch shares one
catalogue snapshot whose popularity and item prior count only what came before that week.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.data.features import HISTORY_CAP
from recsys_retrain.model import ENCODED_USER_COLUMNS, FeatureEncoder, item_prior

PERIOD_DAYS = 7


@dataclass(frozen=True)
class Examples:
    """Training examples: who (profile + causal history) interacted with which catalogue row.

    Each example's history is the user's items *before* it (at most ``HISTORY_CAP``),
    a slice ``sequence[start : start + length]`` of the users' time-ordered items, so
    the model learns to predict the next items from the past, as it is used.
    """

    users: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    start: np.ndarray
    length: np.ndarray
    period: np.ndarray

    def batches(
        self, batch_size: int, rng: np.random.Generator, draws: dict[int, int] | None = None
    ) -> list[np.ndarray]:
        """Shuffled batches, each from a single period so it shares one catalogue snapshot.

        Args:
            batch_size: examples per batch.
            rng: the run's generator (the epoch's order).
            draws: examples to draw from each period (``recency_draws``); None: each
                example once.
        """
        out = []
        for p in np.unique(self.period):
            members = np.flatnonzero(self.period == p)
            if draws is not None:
                members = resample(members, draws[int(p)], rng)
            members = rng.permutation(members)
            out += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self, idx: np.ndarray, encoder: FeatureEncoder, id_dropout: float = 0.0, epoch: int = 0
    ) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        """The user KJT and target rows of examples ``idx``; about ``id_dropout`` of them see their user as
        unknown in ``epoch`` (``dropped_ids``, keyed by the example's place in the time-ordered interactions,
        ``start + length``, which a store's reordering keeps)."""
        lengths = self.length[idx]
        total = int(lengths.sum())
        gather = np.repeat(self.start[idx] - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        users = self.users[idx]
        drop = dropped_ids(self.start[idx] + lengths, epoch, id_dropout)
        if drop.any():
            users = np.array(users)
            users[drop, 0] = 0
        kjt = encoder.user_kjt_encoded(users, (self.sequence[gather], lengths))
        return kjt, torch.from_numpy(self.labels[idx])


def dropped_ids(keys: np.ndarray, epoch: int, share: float) -> np.ndarray:
    """Which examples train as an unknown user (user id row 0): about ``share`` of them, anew each epoch.

    ``keys`` identify the examples whatever their order (``Examples.batch`` passes their
    place in the time-ordered interactions).

    A user the encoder does not know (one who arrived after training, served from their
    profile and history) is scored with the id table's row 0. Without this, row 0 never
    trains and adds an arbitrary vector to every such user; with it, row 0 and the tower
    learn to rank from the profile and the history bags alone. A hash of the example and
    the epoch, not a generator: no state to checkpoint, and a resumed run drops the same.

    Example:
        >>> float(dropped_ids(np.arange(100_000), epoch=0, share=0.1).mean().round(2))
        0.1
        >>> bool((dropped_ids(np.arange(10), 0, 0.5) == dropped_ids(np.arange(10), 1, 0.5)).all())
        False
    """
    if share <= 0:
        return np.zeros(len(keys), bool)
    with np.errstate(over="ignore"):  # the hash wraps around 2**64 on purpose
        mixed = (np.asarray(keys, np.uint64) + np.uint64(epoch) * np.uint64(0x632BE59BD9B4E019)) * np.uint64(0x9E3779B97F4A7C15)
    return (mixed >> np.uint64(40)).astype(np.float64) / float(1 << 24) < share


def recency_draws(period: np.ndarray, half_life_days: float | None) -> dict[int, int] | None:
    """Examples per period for an epoch that weights recent weeks more, at the same epoch size.

    A period ``age`` days before the newest one weighs ``0.5 ** (age / half_life_days)``;
    its draws are its example count times its weight, scaled so the epoch still holds
    about ``len(period)`` examples (the same compute as an unweighted epoch). Under drift
    the oldest interactions describe tastes that no longer hold.

    Args:
        period: the week of each example (``Examples.period``).
        half_life_days: age at which an example counts half; None: no weighting.

    Returns:
        ``{period: draws}``, or None when there is no weighting.

    Example:
        >>> recency_draws(np.array([0, 0, 1, 1]), 7.0)
        {0: 1, 1: 3}
    """
    if half_life_days is None:
        return None
    weeks, counts = np.unique(period, return_counts=True)
    weights = counts * 0.5 ** ((weeks.max() - weeks) * PERIOD_DAYS / half_life_days)
    draws = np.maximum(np.rint(weights * len(period) / weights.sum()), 1).astype(int)
    return {int(w): int(d) for w, d in zip(weeks, draws)}


def resample(members: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``members``: each whole times over, the remainder drawn without replacement (stratified, low variance)."""
    whole, extra = divmod(n, len(members))
    return np.concatenate([np.tile(members, whole), rng.choice(members, extra, replace=False)])


def training_examples(history: pd.DataFrame, encoder: FeatureEncoder, since: pd.Timestamp | None = None) -> Examples:
    """One example per interaction with a catalogue item, with the user's earlier items.

    ``since``: examples only for interactions from then on (a warm update's span), while
    their histories still reach back into everything before, as at serving time.
    """
    frame = history.assign(_row=encoder.item_rows(history["item_id"]))
    frame = frame[frame["_row"] >= 0].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    position = frame.groupby("user_id").cumcount().to_numpy()
    length = np.minimum(position, HISTORY_CAP)
    start = np.arange(len(frame)) - length
    labels = frame["_row"].to_numpy(np.int64)
    keep = slice(None) if since is None else (frame["timestamp"] >= since).to_numpy()
    users = encoder.encode_users(frame.loc[keep, ENCODED_USER_COLUMNS])
    return Examples(users, labels[keep], labels, start[keep], length[keep], period_of(frame.loc[keep, "timestamp"]))


def period_of(timestamps: pd.Series) -> np.ndarray:
    """Week number of each timestamp: the unit of catalogue popularity snapshots."""
    return (timestamps.astype("int64") // (PERIOD_DAYS * 86_400 * 10**9)).to_numpy()


class Snapshot(NamedTuple):
    """The catalogue as one period's examples see it: item features and the item prior's features.

    Attributes:
        items: the item KJT (``FeatureEncoder.item_kjt``), its popularity bucket as of the period's start.
        prior: ``[N, len(PRIOR_DAYS)]`` ``item_prior`` features as of the period's start.
    """

    items: KeyedJaggedTensor
    prior: torch.Tensor

    def to(self, device: torch.device) -> Snapshot:
        return Snapshot(self.items.to(device), self.prior.to(device))


def catalogue_snapshots(
    history: pd.DataFrame, catalogue: pd.DataFrame, encoder: FeatureEncoder, periods: np.ndarray
) -> dict[int, Snapshot]:
    """Item features and prior per period, with popularity counted strictly before the period starts.

    An example from March must not see April's popularity: each period's snapshot
    counts only earlier interactions, as serving would. A snapshot is small (the item
    KJT and an ``[N, P]`` matrix), so every period keeps its own.
    """
    start = pd.to_datetime(np.unique(periods) * PERIOD_DAYS * 86_400 * 10**9, utc=True)
    snapshots = {}
    for period, begin in zip(np.unique(periods), start):
        before = history[history["timestamp"] < begin]
        snapshots[int(period)] = Snapshot(
            encoder.item_kjt(catalogue, encoder.recent_counts(before, catalogue)),
            torch.from_numpy(item_prior(before, catalogue, end=begin)),
        )
    return snapshots
