"""Sampled softmax with a logQ correction, for catalogues too large for a full softmax per step.

The full softmax scores every catalogue item at every step: the item tower runs over the
whole catalogue and the logits are ``batch x catalogue``, so a step's cost grows with the
catalogue. Above ``TrainSettings.sampled_softmax_above`` items a step scores only the
batch's positives and ``sampled_negatives`` items drawn from the training items'
frequency (smoothed, to the power ``SAMPLING_POWER``), shared by the whole batch. Drawn
that way the popular items are over-represented among the negatives, which would push
them down; subtracting ``log Q`` (the log of each candidate's chance of being in the
set) from its logit removes that bias (Bengio & Senecal 2008; Yi et al. 2019, "Sampling-bias-
corrected neural modeling for large corpus item recommendations"). Below the threshold
the full softmax stays: there it is affordable and exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

SAMPLING_POWER = 0.75  # word2vec's unigram^0.75: between popularity and uniform


@dataclass
class NegativeSampler:
    """Draws a batch's candidate rows: its positives plus shared negatives, with their log Q.

    Args:
        labels: catalogue row of every training example (what the frequency counts).
        n_items: catalogue size.
        negatives: items drawn per batch (with replacement; repeats collapse).
        seed: of the sampler's own generator (the run's batch order is left alone).

    Example:
        >>> s = NegativeSampler(np.array([0, 0, 0, 1]), n_items=1000, negatives=50, seed=0)
        >>> rows, log_q, target = s.draw(np.array([1, 0]))
        >>> rows[target].tolist(), bool((log_q <= 0).all())
        ([1, 0], True)
    """

    labels: np.ndarray
    n_items: int
    negatives: int
    seed: int = 0
    q: np.ndarray = field(init=False)
    cum: np.ndarray = field(init=False)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.n_items).astype(np.float64)
        weight = (counts + 1.0) ** SAMPLING_POWER
        self.q = weight / weight.sum()
        self.cum = np.cumsum(self.q)
        self.rng = np.random.default_rng([self.seed, 7])

    def draw(self, target: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """``(rows, log_q, target)``: sorted unique candidate rows, ``[len(rows)]`` log inclusion
        probabilities, and each example's label as a position in ``rows``."""
        picked = np.searchsorted(self.cum, self.rng.random(self.negatives) * self.cum[-1], side="right")
        rows = np.unique(np.concatenate([np.asarray(target, dtype=np.int64), picked.clip(max=self.n_items - 1)]))
        # chance that a row is among `negatives` draws: 1 - (1 - q)^M, computed stably
        inclusion = -np.expm1(self.negatives * np.log1p(-np.minimum(self.q[rows], 1 - 1e-12)))
        position = np.searchsorted(rows, target)
        return rows, torch.from_numpy(np.log(inclusion).astype(np.float32)), torch.from_numpy(position.astype(np.int64))


def subset_kjt(kjt: KeyedJaggedTensor, rows: np.ndarray) -> KeyedJaggedTensor:
    """The rows ``rows`` of a per-item KJT (every key jagged over the same items), in that order.

    Example:
        >>> kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 5]), lengths=torch.tensor([1, 1, 2, 1]))
        >>> sub = subset_kjt(kjt, np.array([1]))
        >>> sub.values().tolist(), sub.lengths().tolist()
        ([2, 5], [1, 1])
    """
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(kjt.values().device)
    values, lengths = [], []
    for jt in kjt.to_dict().values():
        lens, offsets = jt.lengths(), jt.offsets()
        take = lens[index]
        starts = offsets[:-1][index]
        total = int(take.sum())
        ends = torch.cumsum(take, 0)
        within = torch.arange(total, device=index.device) - torch.repeat_interleave(ends - take, take)
        values.append(jt.values()[torch.repeat_interleave(starts, take) + within])
        lengths.append(take)
    return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths))
