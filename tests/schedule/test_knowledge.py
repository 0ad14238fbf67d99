"""The knowledge base keeps past runs in MLflow and suggests from the nearest ones."""

from __future__ import annotations

import pytest

from recsys_retrain.schedule.knowledge import KnowledgeBase, Record


def record(log_n: float, dense: float, best: int, regime: str) -> Record:
    return Record({"log_interactions": log_n, "gini": 0.5}, dense, dense * 5, best_epoch=best, epochs=best + 2,
                  validation=0.2, regime=regime)


def test_records_survive_in_mlflow_and_a_new_base_loads_them(settings):
    kb = KnowledgeBase(tracking_uri=settings.mlflow_uri)
    kb.add(record(5.0, 0.01, 6, "ml-100k"))
    kb.add(record(4.0, 0.03, 3, "sparse"))
    again = KnowledgeBase(tracking_uri=settings.mlflow_uri)
    assert len(again) == 2
    assert {r.regime for r in again.records} == {"ml-100k", "sparse"}


def test_the_suggestion_follows_the_nearest_runs():
    kb = KnowledgeBase([record(5.0, 0.01, 6, "big"), record(3.0, 0.04, 2, "small")], k=1)
    near_big, near_small = kb.suggest({"log_interactions": 4.9, "gini": 0.5}), kb.suggest({"log_interactions": 3.1, "gini": 0.5})
    assert near_big.dense_lr == pytest.approx(0.01) and near_big.neighbours == ("big",)
    assert near_small.dense_lr == pytest.approx(0.04) and near_small.max_epochs == 4


def test_runs_without_an_outcome_are_ignored():
    kb = KnowledgeBase([Record({"log_interactions": 5.0}, 0.01, 0.05, best_epoch=1, epochs=1, validation=0.0)])
    assert kb.suggest({"log_interactions": 5.0}) is None
