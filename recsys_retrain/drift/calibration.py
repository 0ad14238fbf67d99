"""Thresholds calibrated by permuting users between the two windows.

Every tested signal is scored on the observed split and on ``permutations`` random
re-assignments of the pooled units to the two windows; the thresholds are set jointly
(Westfall-Young min-p) at family-wise ``alpha``. Why: docs/drift.md.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse as sp

from recsys_retrain.drift.signals import Observed, Signal, distance
from recsys_retrain.settings import DriftSettings

DENSE_CELLS = 20_000_000
"""Unit x item count matrices up to this size are multiplied dense (160 MB of float64 at most)."""
PERMUTATION_CELLS = 20_000_000
"""Largest (permutations x keys) block of reference counts held at once (bounds memory)."""


def calibrate(tested: list[Signal], observed: dict[str, Observed], settings: DriftSettings) -> dict[str, tuple[float, float, float]]:
    """``{name: (value, threshold, p_value)}`` from one shared set of user permutations."""
    if not tested:
        return {}
    value, perm = _permutation_scores(tested, observed, settings)
    b_total = perm.shape[0]
    perm = np.round(perm, 12)
    value = np.round(value, 12)
    ascending = np.sort(perm, axis=0)
    # permutation p-value of each permutation, per signal, then the min over signals
    at_least = b_total - np.stack([np.searchsorted(ascending[:, j], perm[:, j], side="left") for j in range(len(tested))], axis=1)
    min_p = (at_least / b_total).min(axis=1)
    k = int(math.floor(settings.alpha * b_total))
    critical = float(np.sort(min_p)[k - 1]) if k >= 1 else 0.0
    allowed = int(math.floor(critical * (b_total + 1) - 1 + 1e-9))  # permutations allowed at or above the value
    out = {}
    for j, s in enumerate(tested):
        descending = ascending[::-1, j]
        threshold = float(descending[allowed]) if allowed >= 0 else float(descending[0])
        floor = settings.floors.get(s.name, settings.stattest_threshold)
        threshold = max(threshold, float(floor))
        p_value = (1 + int((perm[:, j] >= value[j]).sum())) / (b_total + 1)
        if allowed < 0:
            threshold = max(threshold, float(value[j]))  # too few permutations to ever reject
        out[s.name] = (float(value[j]), threshold, float(p_value))
    return out


def _permutation_scores(tested: list[Signal], observed: dict[str, Observed], settings: DriftSettings) -> tuple[np.ndarray, np.ndarray]:
    """Every tested signal's score on the observed split and on ``permutations`` random splits.

    Signals on the main reference/current units share one set of permutations (their
    dependence is kept for the joint thresholds); a "target" signal has its own units
    and permutations.
    """
    rng = np.random.default_rng(settings.seed)
    value, perm = np.zeros(len(tested)), np.zeros((settings.permutations, len(tested)))
    for group in ([s for s in tested if s.unit != "target"], [s for s in tested if s.unit == "target"]):
        if group:
            cols = [tested.index(s) for s in group]
            value[cols], perm[:, cols] = _group_scores(group, observed, settings, rng)
    return value, perm


def _group_scores(
    tested: list[Signal], observed: dict[str, Observed], settings: DriftSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of signals on the same units: the observed split (first) and ``permutations`` random splits."""
    histogram = [s for s in tested if not s.relative]
    relative = [s for s in tested if s.relative]
    first = observed[tested[0].name]
    n_ref, n_units = first.n_ref_units, first.counts.shape[0]
    blocks = [observed[s.name].counts for s in histogram]
    widths = np.cumsum([0] + [b.shape[1] for b in blocks])
    data = np.hstack(blocks) if blocks else np.zeros((n_units, 0))
    total = data.sum(axis=0)
    keyed = {id(observed[s.name]): observed[s.name] for s in relative}  # item signals share one matrix
    transposed = {k: (_keys_by_units(o.counts), _keys_by_units(o.raw)) for k, o in keyed.items()}
    widest = max([m.shape[0] for m, _ in transposed.values()], default=1)
    chunk = int(max(1, min(250, PERMUTATION_CELLS // max(widest, 1))))

    observed_pick = np.zeros((1, n_units))
    observed_pick[0, :n_ref] = 1.0
    b_total = settings.permutations
    scores = np.empty((b_total + 1, len(tested)))
    column = {s.name: j for j, s in enumerate(tested)}
    for start in range(0, b_total + 1, chunk):
        b = min(chunk, b_total + 1 - start)
        pick = _random_picks(rng, b - (start == 0), n_units, n_ref)
        if start == 0:
            pick = np.vstack([observed_pick, pick])
        ref_h = pick @ data
        for s, a, c in zip(histogram, widths, widths[1:]):
            scores[start : start + b, column[s.name]] = distance(s, observed[s.name], ref_h[:, a:c], total[a:c] - ref_h[:, a:c])
        for key, (weighted_t, raw_t) in transposed.items():
            counts = _ItemCounts(weighted_t, raw_t, pick)
            for s in relative:
                if id(observed[s.name]) == key:
                    scores[start : start + b, column[s.name]] = _relative_score(s, counts, settings)
    for s in relative:
        if s.method == "share_gap":  # two-sided: distance from the no-drift gap
            j = column[s.name]
            scores[:, j] = np.abs(scores[:, j] - scores[1:, j].mean())
    return scores[0], scores[1:]


def _random_picks(rng: np.random.Generator, b: int, n_units: int, n_ref: int) -> np.ndarray:
    """``b`` random 0/1 rows with ``n_ref`` ones: which units sit on the reference side."""
    pick = np.zeros((b, n_units))
    if b == 0:
        return pick
    keys = rng.random((b, n_units))
    idx = np.argpartition(keys, n_ref - 1, axis=1)[:, :n_ref] if n_ref < n_units else np.tile(np.arange(n_units), (b, 1))
    np.put_along_axis(pick, idx, 1.0, axis=1)
    return pick


def _keys_by_units(matrix: sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """The (keys x units) transpose, dense while small: a dense product uses every core, a sparse one only one."""
    if matrix.shape[0] * matrix.shape[1] <= DENSE_CELLS:
        return np.ascontiguousarray(matrix.T.toarray(), dtype=np.float32)
    return matrix.T.tocsr().astype(np.float32)


class _ItemCounts:
    """Reference and current item counts of a batch of splits, (B x items), computed once per batch."""

    def __init__(self, weighted_t: np.ndarray | sp.csr_matrix, raw_t: np.ndarray | sp.csr_matrix, pick: np.ndarray) -> None:
        pick = pick.astype(np.float32)  # exact for counts; halves the memory traffic of the product
        self.ref = np.asarray(weighted_t @ pick.T, dtype=np.float64).T
        self.cur = np.asarray(weighted_t.sum(axis=1, dtype=np.float64)).ravel() - self.ref
        self._raw_t, self._pick = raw_t, pick

    @functools.cached_property
    def by_popularity(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts with items sorted by reference count, most popular first."""
        order = np.argsort(-self.ref, axis=1)
        return np.take_along_axis(self.ref, order, axis=1), np.take_along_axis(self.cur, order, axis=1)

    @property
    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        ref = np.asarray(self._raw_t @ self._pick.T, dtype=np.float64).T
        return ref, np.asarray(self._raw_t.sum(axis=1, dtype=np.float64)).ravel() - ref


def _relative_score(signal: Signal, counts: _ItemCounts, settings: DriftSettings) -> np.ndarray:
    """Per split of the batch: a signal whose bins are defined by the reference side's items."""
    ref, cur = counts.ref, counts.cur
    cur_total = cur.sum(axis=1)
    ok = (cur_total > 0) & (ref.sum(axis=1) > 0)
    safe_total = np.where(ok, cur_total, 1.0)
    if signal.name == "new_item_share":
        return np.where(ok, (cur * (ref <= 0)).sum(axis=1) / safe_total, 0.0)
    if signal.name == "rising_item_share":
        ref_n, cur_n = counts.raw
        expected = ref_n * (cur_n.sum(axis=1, keepdims=True) / np.maximum(ref_n.sum(axis=1, keepdims=True), 1.0))
        rising = (cur_n >= settings.rising_min_users) & (cur_n >= settings.rising_factor * expected)
        return np.where(ok, (cur * rising).sum(axis=1) / safe_total, 0.0)
    ref_sorted, cur_sorted = counts.by_popularity
    if signal.name == "top_items_share":
        n = min(settings.top_items, ref.shape[1])
        ref_share = ref_sorted[:, :n].sum(axis=1) / np.maximum(ref.sum(axis=1), 1e-300)
        cur_share = cur_sorted[:, :n].sum(axis=1) / np.maximum(cur_total, 1e-300)
        return np.where(ok, cur_share - ref_share, 0.0)
    n_seen = (ref > 0).sum(axis=1, keepdims=True)  # deciles of the items the reference saw, by popularity rank
    position = np.arange(ref.shape[1])[None, :]
    seen = position < n_seen  # sorted descending: the seen items come first
    decile = np.clip(np.ceil((position + 1) / np.maximum(n_seen, 1) * 10), 1, 10).astype(int) - 1
    cell = (np.arange(len(ref))[:, None] * 10 + decile)[seen]
    ref_h = np.bincount(cell, weights=ref_sorted[seen], minlength=len(ref) * 10).reshape(len(ref), 10)
    cur_h = np.bincount(cell, weights=cur_sorted[seen], minlength=len(ref) * 10).reshape(len(ref), 10)
    return distance(signal, None, ref_h, cur_h)
