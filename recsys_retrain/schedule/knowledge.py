"""The knowledge base of past runs: data profile -> schedule -> outcome, kept in MLflow.

Every adaptive run records where it started, where the controller took it (the rates
when exploring ended, the epoch of its best validation) and how well it did. A new
run on similar data starts from what worked there: ``suggest`` averages, in log scale,
the rates its nearest neighbours converged to, weighted by closeness, and sizes the
epoch budget from their best epochs. The features are standardised log-scale profile
numbers, so "similar" means similar size, sparsity, skew and drift.

MLflow is the store because it is already the run ledger of the pipeline: one run
per record in the ``<model>-schedule-kb`` experiment, features and outcomes as
metrics, the full record as a JSON artifact-free tag, searchable with the MLflow API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys_retrain.records import lenient_from_dict

FEATURES = ("log_interactions", "log_users", "log_items", "log_density", "gini", "long_tail_share", "drift_share")


@dataclass(frozen=True)
class Record:
    """One past run: its data's features, the schedule it ended with, and its outcome."""

    features: dict[str, float]
    dense_lr: float  # the rate the run's best weights were trained at (the base rate times the controller's changes)
    sparse_lr: float
    best_epoch: int  # 1-based epoch of the best validation
    epochs: int
    validation: float
    regime: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return lenient_from_dict(cls, d)


@dataclass(frozen=True)
class Suggestion:
    """What past runs suggest for a new one, with the runs it came from."""

    dense_lr: float
    sparse_lr: float
    max_epochs: int
    neighbours: tuple[str, ...]
    distance: float


def explore_rates(trace: dict[str, Any]) -> tuple[float, float] | None:
    """(dense, sparse) rate a finished run found: its plan's rates times the controller's multiplier
    at its best epoch (older traces: when exploring ended).

    The best epoch's rate, not the peak: a raise the run later rolled back, or one that came
    after its best weights, is not what worked, and a next run that starts there can diverge.
    """
    plan, controller = trace.get("plan"), trace.get("controller")
    if not plan or not controller:
        return None
    control = controller.get("best_control") or controller["explore_control"]
    return plan["dense_lr"] * control, plan["sparse_lr"] * control


def features(profile: dict[str, Any], drift_share: float = 0.0) -> dict[str, float]:
    """The knowledge base's view of a data profile (``DataProfile.to_dict()``)."""
    return {
        "log_interactions": math.log10(max(profile.get("interactions", 1), 1)),
        "log_users": math.log10(max(profile.get("users", 1), 1)),
        "log_items": math.log10(max(profile.get("items", 1), 1)),
        "log_density": math.log10(max(profile.get("density", 1e-9), 1e-9)),
        "gini": float(profile.get("gini", 0.0)),
        "long_tail_share": float(profile.get("long_tail_share", 0.0)),
        "drift_share": float(drift_share),
    }


class KnowledgeBase:
    """Records of past runs, in memory or backed by an MLflow experiment.

    Args:
        records: initial records.
        tracking_uri: MLflow tracking URI to load from and add to (None: memory only).
        experiment: experiment name of the records.
        k: neighbours that a suggestion averages.

    Example:
        >>> kb = KnowledgeBase()
        >>> kb.suggest({"log_interactions": 5.0}) is None
        True
        >>> kb.add(Record({"log_interactions": 5.0}, 0.02, 0.1, best_epoch=4, epochs=6, validation=0.2))
        >>> round(kb.suggest({"log_interactions": 5.0}).dense_lr, 3)
        0.02
    """

    def __init__(
        self,
        records: Sequence[Record] = (),
        tracking_uri: str | None = None,
        experiment: str = "two_tower-schedule-kb",
        k: int = 3,
    ) -> None:
        self.records, self.tracking_uri, self.experiment, self.k = list(records), tracking_uri, experiment, k
        if tracking_uri is not None:
            self.records += self._load()

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: Record) -> None:
        """Adds a record, and logs it to MLflow when the base is backed by it."""
        self.records.append(record)
        if self.tracking_uri is None:
            return
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        run = client.create_run(exp_id, tags={"kb.record": json.dumps(record.to_dict()), "kb.regime": record.regime})
        for key, value in {**record.features, "dense_lr": record.dense_lr, "sparse_lr": record.sparse_lr,
                           "best_epoch": record.best_epoch, "epochs": record.epochs,
                           "validation": record.validation}.items():
            client.log_metric(run.info.run_id, key, float(value))
        client.set_terminated(run.info.run_id)

    def suggest(self, query: dict[str, float]) -> Suggestion | None:
        """Rates and epoch budget from the ``k`` nearest past runs; None when the base is empty."""
        usable = [r for r in self.records if r.validation > 0 and r.dense_lr > 0 and r.sparse_lr > 0]
        if not usable:
            return None
        keys = [f for f in FEATURES if f in query and all(f in r.features for r in usable)]
        matrix = np.array([[r.features[f] for f in keys] for r in usable], dtype=float).reshape(len(usable), len(keys))
        point = np.array([query[f] for f in keys], dtype=float)
        scale = np.maximum(matrix.std(axis=0), 0.25) if len(usable) > 1 else np.ones(len(keys))
        dist = np.sqrt((((matrix - point) / scale) ** 2).sum(axis=1)) if keys else np.zeros(len(usable))
        order = np.argsort(dist, kind="stable")[: self.k]
        weight = 1.0 / (1.0 + dist[order])
        weight /= weight.sum()
        chosen = [usable[i] for i in order]
        dense = math.exp(sum(w * math.log(r.dense_lr) for w, r in zip(weight, chosen)))
        sparse = math.exp(sum(w * math.log(r.sparse_lr) for w, r in zip(weight, chosen)))
        best = sum(w * r.best_epoch for w, r in zip(weight, chosen))
        return Suggestion(dense, sparse, max(3, math.ceil(best * 1.5) + 1),
                          tuple(r.regime for r in chosen), float(dist[order].mean()))

    def _load(self) -> list[Record]:
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        return [Record.from_dict(json.loads(r.data.tags["kb.record"])) for r in runs if "kb.record" in r.data.tags]
