"""Full-ranking metrics, checked against cases computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.evaluate import (
    UserEval,
    average_precision_at_k,
    evaluate,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
    topk_hits,
)


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
    assert result.metrics == pytest.approx(
        {"ndcg_at_1": 0.5, "recall_at_1": 0.5, "map_at_1": 0.5, "mrr_at_1": 0.5, "hit_rate_at_1": 0.5,
         "coverage_at_1": 2 / 3}  # top-1 lists are [20] and [30]: two of three items
    )


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
    """Plain-Python NDCG, Recall, AP, RR and hit at k, from the definitions, one user at a time."""
    out = {"ndcg": [], "recall": [], "ap": [], "rr": [], "hit": []}
    for s, rel, ex in zip(scores.tolist(), relevant.tolist(), exclude.tolist()):
        ranked = sorted((i for i in range(len(s)) if not ex[i]), key=lambda i: (-s[i], i))[:k]
        n_rel = sum(rel)
        hit_ranks = [rank + 1 for rank, i in enumerate(ranked) if rel[i]]
        dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(n_rel, k)))
        out["ndcg"].append(dcg / ideal if ideal else 0.0)
        out["recall"].append(len(hit_ranks) / n_rel if n_rel else 0.0)
        precisions = [(j + 1) / r for j, r in enumerate(hit_ranks)]
        out["ap"].append(sum(precisions) / min(n_rel, k) if n_rel else 0.0)
        out["rr"].append(1 / hit_ranks[0] if hit_ranks else 0.0)
        out["hit"].append(1.0 if hit_ranks else 0.0)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_metrics_match_a_plain_reference_on_random_cases(seed):
    gen = torch.Generator().manual_seed(seed)
    users, items, k = 7, 30, 5
    scores = torch.rand(users, items, generator=gen)  # continuous: no ties, so the order is unique
    exclude = torch.rand(users, items, generator=gen) < 0.2
    relevant = (torch.rand(users, items, generator=gen) < 0.15) & ~exclude
    hits = topk_hits(scores, relevant, exclude, k)
    n_rel = relevant.sum(dim=1)
    want = reference_metrics(scores, relevant, exclude, k)
    assert ndcg_at_k(hits, n_rel, k).tolist() == pytest.approx(want["ndcg"], abs=1e-6)
    assert recall_at_k(hits, n_rel, k).tolist() == pytest.approx(want["recall"], abs=1e-6)
    assert average_precision_at_k(hits, n_rel, k).tolist() == pytest.approx(want["ap"], abs=1e-6)
    assert reciprocal_rank_at_k(hits, k).tolist() == pytest.approx(want["rr"], abs=1e-6)
    assert (hits.sum(dim=1) > 0).float().tolist() == pytest.approx(want["hit"])


def segment_eval(is_cold, longtail) -> UserEval:
    n = len(is_cold)
    return UserEval(k=10, user_ids=np.arange(n), ndcg=np.full(n, 0.5), recall=np.full(n, 0.4),
                    is_cold=np.asarray(is_cold, bool), longtail_ndcg=np.asarray(longtail, float), coverage=0.3,
                    n_items=100)


@pytest.mark.parametrize(
    "is_cold,longtail,empty",
    [
        ([False, False, False], [0.2, math.nan, 1.0], {"cold_ndcg_at_10"}),  # every user warm
        ([True, True, True], [0.2, math.nan, 1.0], set()),  # every user cold: the cold mean is the overall one
        ([True, False, False], [math.nan] * 3, {"longtail_ndcg_at_10"}),  # no long-tail item met
        ([], [], {"ndcg_at_10", "recall_at_10", "cold_ndcg_at_10", "longtail_ndcg_at_10"}),  # nobody scored
    ],
    ids=["no-cold-users", "no-warm-users", "no-long-tail", "no-users"],
)
def test_an_empty_segment_leaves_a_task_as_null_with_a_note(is_cold, longtail, empty):
    reported = segment_eval(is_cold, longtail).reported()
    json.dumps(reported, allow_nan=False)  # valid JSON: what an XCom, a file or MLflow receives
    notes = reported.pop("notes")
    assert {name for name, value in reported.items() if value is None} == empty == set(notes)
    assert all(notes[name] for name in empty)
