"""Full-ranking metrics, checked against cases computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pipeline.evaluate import evaluate, ndcg_at_k, recall_at_k, topk_hits


def test_ndcg_of_a_single_hit_at_rank_one_is_one():
    assert ndcg_at_k(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1]), 3).item() == pytest.approx(1.0)


def test_ndcg_by_hand_two_relevant_hits_at_ranks_two_and_three():
    # DCG = 1/log2(3) + 1/log2(4); ideal DCG (2 relevant) = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    got = ndcg_at_k(torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([2]), 3)
    assert got.item() == pytest.approx(expected)


def test_ndcg_ideal_is_capped_at_k():
    # 5 relevant items but k=2: ideal DCG counts only two ranks, so two hits score 1.
    assert ndcg_at_k(torch.tensor([[1.0, 1.0]]), torch.tensor([5]), 2).item() == pytest.approx(1.0)


def test_recall_divides_by_all_relevant_items():
    got = recall_at_k(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([4]), 3)
    assert got.item() == pytest.approx(0.5)


def test_users_without_relevant_items_score_zero_not_nan():
    hits = torch.zeros(1, 3)
    assert ndcg_at_k(hits, torch.tensor([0]), 3).item() == 0.0
    assert recall_at_k(hits, torch.tensor([0]), 3).item() == 0.0


def test_excluded_items_are_never_ranked():
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.0]])
    relevant = torch.tensor([[False, False, True, False]])
    exclude = torch.tensor([[True, True, False, False]])
    assert topk_hits(scores, relevant, exclude, 1).tolist() == [[1.0]]


def test_k_larger_than_catalogue_pads_with_misses():
    hits = topk_hits(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]]), torch.zeros(1, 2, dtype=torch.bool), 4)
    assert hits.tolist() == [[0.0, 1.0, 0.0, 0.0]]


class FixedScores:
    """A recommender whose scores are given: item 30 > 20 > 10 for everyone."""

    catalogue = pd.DataFrame({"item_id": [10, 20, 30]})

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return torch.tensor([[1.0, 2.0, 3.0]]).repeat(len(users), 1)


def _frame(rows):
    return pd.DataFrame(
        [
            {"user_id": u, "item_id": i, "timestamp": pd.Timestamp(t, tz="UTC"),
             "user_gender": "F", "user_age": 30, "user_occupation": "x"}
            for u, i, t in rows
        ]
    )


def test_evaluate_excludes_history_and_averages_over_users_with_holdout_items():
    history = _frame([(1, 30, "2020-01-01")])  # user 1 saw the top item already
    holdout = _frame([(1, 10, "2020-01-08"), (2, 30, "2020-01-08")])
    result = evaluate(FixedScores(), history, holdout, k=1)
    # user 1: ranking without item 30 is [20, 10]; top-1 = 20, a miss. user 2 (cold): top-1 = 30, a hit.
    assert result.n_users == 2 and result.n_cold_users == 1
    assert result.ndcg == pytest.approx(0.5)
    assert result.recall == pytest.approx(0.5)
    assert result.metrics == {"ndcg_at_1": pytest.approx(0.5), "recall_at_1": pytest.approx(0.5)}


def test_evaluate_on_a_holdout_of_only_seen_items_reports_no_users():
    history = _frame([(1, 30, "2020-01-01")])
    holdout = _frame([(1, 30, "2020-01-08")])
    result = evaluate(FixedScores(), history, holdout, k=1)
    assert result.n_users == 0 and math.isnan(result.ndcg)


def test_holdout_items_outside_the_catalogue_count_as_misses():
    history = _frame([(1, 30, "2020-01-01")])
    holdout = _frame([(2, 30, "2020-01-08"), (2, 99, "2020-01-08")])  # item 99 is unknown to the model
    result = evaluate(FixedScores(), history, holdout, k=3)
    assert result.recall == pytest.approx(0.5)


def reference_metrics(scores, relevant, exclude, k):
    """Plain-Python NDCG@k and Recall@k, written from the definitions, one user at a time."""
    ndcgs, recalls = [], []
    for s, rel, ex in zip(scores.tolist(), relevant.tolist(), exclude.tolist()):
        ranked = sorted((i for i in range(len(s)) if not ex[i]), key=lambda i: (-s[i], i))[:k]
        n_rel = sum(rel)
        dcg = sum(1 / math.log2(rank + 2) for rank, i in enumerate(ranked) if rel[i])
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(n_rel, k)))
        ndcgs.append(dcg / ideal if ideal else 0.0)
        recalls.append(sum(rel[i] for i in ranked) / n_rel if n_rel else 0.0)
    return ndcgs, recalls


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_metrics_match_a_plain_reference_on_random_cases(seed):
    gen = torch.Generator().manual_seed(seed)
    users, items, k = 7, 30, 5
    scores = torch.rand(users, items, generator=gen)  # continuous: no ties, so the order is unique
    exclude = torch.rand(users, items, generator=gen) < 0.2
    relevant = (torch.rand(users, items, generator=gen) < 0.15) & ~exclude
    hits = topk_hits(scores, relevant, exclude, k)
    n_rel = relevant.sum(dim=1)
    want_ndcg, want_recall = reference_metrics(scores, relevant, exclude, k)
    assert ndcg_at_k(hits, n_rel, k).tolist() == pytest.approx(want_ndcg, abs=1e-6)
    assert recall_at_k(hits, n_rel, k).tolist() == pytest.approx(want_recall, abs=1e-6)
