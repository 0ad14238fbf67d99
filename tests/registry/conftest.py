"""Shared helpers of the registry tests: real MLflow on SQLite in tmp_path, tiny models, gate decisions.

Decisions come from the real significance gate (:func:`recsys_retrain.gate.decide`)
on holdouts where every user scores the same value, so a test states the two
means and gets the decision the pipeline would record.
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow import MlflowClient
from torch import nn

from recsys_retrain.gate import GateDecision, decide
from recsys_retrain.registry.candidates import Candidate, champion, log_candidate
from recsys_retrain.registry.promotion import apply_decision
from recsys_retrain.settings import Settings
from tests.test_gate import N, ev

METRIC = "ndcg_at_10"


def client(s: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)


def aliases(s: Settings) -> dict[str, int]:
    return {k: int(v) for k, v in client(s).get_registered_model(s.model_name).aliases.items()}


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def log(s: Settings, window: str, value: float, seed: int = 0, **kwargs) -> Candidate:
    return log_candidate(
        tiny_model(seed), settings=s, window=window, params={"lr": 0.1, "epochs": 2}, metrics={METRIC: value}, **kwargs
    )


def gate_decision(
    s: Settings,
    value: float,
    champion_value: float | None,
    *,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    window: str | None = None,
) -> GateDecision:
    """The gate's decision when every holdout user scores ``value`` (and ``champion_value`` for the champion)."""
    champion_eval = None if champion_value is None else ev(np.full(N, champion_value))
    return decide(ev(np.full(N, value)), champion_eval, s.gate, challenger_version=challenger_version,
                  champion_version=champion_version, window=window)


def gate(s: Settings, cand: Candidate, value: float, champion_value: float | None) -> GateDecision:
    """Gates ``cand`` against the current champion, as the gate task does, and applies the decision."""
    current = champion(s)
    decision = gate_decision(
        s, value, champion_value, challenger_version=cand.version, champion_version=current.version if current else None
    )
    apply_decision(decision, s)
    return decision


def promote(s: Settings, cand: Candidate, champion_version: int | None, window: str = "w") -> GateDecision:
    """Applies a promoting decision for ``cand`` measured against ``champion_version``."""
    decision = gate_decision(s, 0.2, 0.1 if champion_version else None, challenger_version=cand.version,
                             champion_version=champion_version, window=window)
    apply_decision(decision, s)
    return decision
