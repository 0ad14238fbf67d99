"""Promotion and revert on real MLflow: gate decisions recorded and applied, manual moves, rollbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_retrain.errors import RegistryError
from recsys_retrain.gate import GateDecision
from recsys_retrain.registry import promotion
from recsys_retrain.registry.aliases import history
from recsys_retrain.registry.candidates import champion
from tests.registry.conftest import aliases, client, gate, gate_decision, log, promote


def test_promotions_move_champion_and_previous(settings):
    v1 = log(settings, "w1", 0.10)
    first = gate(settings, v1, 0.10, None)
    assert first.promote and aliases(settings) == {"challenger": 1, "champion": 1}
    assert champion(settings) == v1

    v2 = log(settings, "w2", 0.12, seed=1)
    second = gate(settings, v2, 0.12, 0.10)
    assert second.promote and second.champion_version == 1
    expected = {"challenger": 2, "champion": 2, "previous": 1}
    assert aliases(settings) == expected

    promotion.apply_decision(second, settings)  # an Airflow retry
    assert aliases(settings) == expected

    c = client(settings)
    mv = c.get_model_version(settings.model_name, "2")
    assert mv.tags["gate.promote"] == "True" and mv.tags["gate.reason"] == second.reason
    assert c.get_run(v2.run_id).data.tags["gate.champion_version"] == "1"
    path = c.download_artifacts(v2.run_id, promotion.DECISION_ARTIFACT)
    assert GateDecision.from_dict(json.loads(Path(path).read_text())) == second


def test_rejected_challenger_leaves_aliases_but_records_why(settings):
    gate(settings, log(settings, "w1", 0.10), 0.10, None)
    v2 = log(settings, "w2", 0.09, seed=1)
    decision = gate(settings, v2, 0.09, 0.10)
    assert not decision.promote
    assert aliases(settings) == {"challenger": 2, "champion": 1}
    mv = client(settings).get_model_version(settings.model_name, "2")
    assert mv.tags["gate.promote"] == "False" and mv.tags["gate.reason"] == decision.reason
    assert "gain -0.0100 < min_delta" in mv.tags["gate.reason"]
    assert mv.tags["gate.check.mean_gain"].startswith("FAIL: ")


def test_a_retried_cycle_cannot_overwrite_the_decision_that_promoted_it(settings):
    """After promotion, a retry sees its own challenger as champion: champion == challenger."""
    v1 = log(settings, "w1", 0.10)
    promoted = gate(settings, v1, 0.10, None)
    retry = gate(settings, log(settings, "w1", 0.10), 0.10, 0.10)
    assert retry.champion_version == retry.challenger_version == 1 and not retry.promote
    assert aliases(settings) == {"challenger": 1, "champion": 1}
    assert client(settings).get_model_version(settings.model_name, "1").tags["gate.reason"] == promoted.reason


def test_apply_decision_needs_an_existing_challenger_version(settings):
    log(settings, "w1", 0.1)
    with pytest.raises(RegistryError, match="no challenger version"):
        promotion.apply_decision(gate_decision(settings, 0.1, None), settings)
    with pytest.raises(RegistryError, match="no version 7"):
        promotion.apply_decision(gate_decision(settings, 0.1, None, challenger_version=7), settings)


def test_a_promotion_measured_against_a_stale_champion_changes_nothing(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    v2, v3 = log(settings, "w2", 0.2, seed=1), log(settings, "w3", 0.2, seed=2)
    promote(settings, v2, 1)
    stale = promote(settings, v3, 1)  # measured against v1, but v2 is champion now
    assert stale.promote and aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    tags = client(settings).get_model_version(settings.model_name, "3").tags
    assert tags["gate.applied"] == "False" and "re-gate" in tags["gate.stale"]


def test_revert_rolls_back_tags_the_version_and_is_idempotent(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    promote(settings, log(settings, "w2", 0.2, seed=1), 1)
    promote(settings, log(settings, "w3", 0.3, seed=2), 2)
    moved = promotion.revert(settings, reason="worse on 2 windows", window="a/2024-02-01", expected_champion=3)
    assert {(m.alias, m.from_version, m.to_version) for m in moved} == {("champion", 3, 2), ("previous", 2, 1)}
    assert aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    tags = client(settings).get_model_version(settings.model_name, "3").tags
    assert tags["reverted"] == "true" and tags["reverted.reason"] == "worse on 2 windows"
    assert tags["reverted.window"] == "a/2024-02-01" and tags["reverted.by"].startswith("monitor (")
    assert promotion.revert(settings, reason="again", expected_champion=3) == []  # a retried monitor task
    assert aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    assert promotion.reverted_on(settings, 3) == "a/2024-02-01" and promotion.reverted_on(settings, 2) is None

    with pytest.raises(RegistryError, match="reverted on window a/2024-02-01"):
        promotion.promote(settings, 3, reason="operator thinks it is fine")
    same_window = gate_decision(settings, 0.4, 0.3, challenger_version=3, champion_version=2)
    with pytest.raises(RegistryError, match="needs a gate decision on a later window"):
        promotion.apply_decision(GateDecision.from_dict({**same_window.to_dict(), "window": "a/2024-02-01"}), settings)
    assert promotion.apply_decision(GateDecision.from_dict({**same_window.to_dict(), "window": "b/2024-03-01"}), settings)
    assert aliases(settings)["champion"] == 3


def test_manual_promotion_is_recorded_like_any_move(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    log(settings, "w2", 0.2, seed=1)
    moved = promotion.promote(settings, 2, reason="hotfix approved by ana", actor="cli promote")
    assert [(m.alias, m.to_version) for m in moved] == [("previous", 1), ("champion", 2)]
    assert history(settings)[-1].reason == "hotfix approved by ana"
    assert promotion.promote(settings, 2, reason="again") == []


def test_the_gate_task_records_the_decision_with_its_power_and_the_promote_path_only_moves(settings):
    """As the DAG runs it: ``record_decision`` in the gate task (nothing moves), then the branch's promote path."""
    v1 = log(settings, "w1", 0.10)
    gate(settings, v1, 0.10, None)
    v2 = log(settings, "w2", 0.12, seed=1)
    decision = gate_decision(settings, 0.12, 0.10, challenger_version=2, champion_version=1, window="a/b")
    assert promotion.record_decision(decision, settings)
    assert aliases(settings) == {"challenger": 2, "champion": 1}

    c = client(settings)
    tags = c.get_model_version(settings.model_name, "2").tags
    assert tags["gate.policy"] == "non_inferiority" and tags["gate.mde"] == str(decision.mde)
    metrics = c.get_run(v2.run_id).data.metrics
    assert metrics["gate.mde"] == decision.mde and metrics["gate.mean_delta"] == pytest.approx(0.02)
    assert metrics["gate.evidence_users"] == decision.evidence_users

    assert promotion.apply_decision(decision, settings, record=False)
    assert aliases(settings) == {"challenger": 2, "champion": 2, "previous": 1}


def test_a_decision_comparing_a_version_with_itself_is_not_recorded(settings):
    v1 = log(settings, "w1", 0.10)
    gate(settings, v1, 0.10, None)
    same = gate_decision(settings, 0.10, 0.10, challenger_version=1, champion_version=1)
    assert not promotion.record_decision(same, settings)
    assert client(settings).get_model_version(settings.model_name, "1").tags["gate.promote"] == "True"
