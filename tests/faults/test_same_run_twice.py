"""Fault: the same DAG run is executed twice for one window (a cleared and re-run Airflow run)."""

from __future__ import annotations

import pytest

from recsys_retrain import cycle
from recsys_retrain.registry.aliases import history
from tests.faults.conftest import aliases, copy_cycle, read_json, report, tiny_settings, versions

NO_DRIFT = {"severity": "none", "html": None, "json": None}


def run_once(pulled: dict, settings) -> dict:
    """train -> evaluate -> gate, the tasks of one run after pull/validate/drift."""
    trained = cycle.train(pulled, settings)
    evaluated = cycle.evaluate(pulled, trained, settings)
    return cycle.gate(pulled, NO_DRIFT, trained, evaluated, settings)


@pytest.mark.slow
def test_a_run_executed_twice_for_one_window_gives_one_version_and_one_decision(
    pulled_template, tmp_path, monkeypatch, record_property
):
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", train={"epochs": 1, "embedding_dim": 8})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    pulled = copy_cycle(pulled_template, tmp_path / "run")

    first = run_once(pulled, settings)
    state = aliases(settings)
    second = run_once(pulled, settings)  # the whole run again, same window

    served = first["served_version"]  # the challenger's refit through the window (train.refit), or itself
    assert first["promoted"] and first["version"] == second["version"] == 1
    assert versions(settings) == sorted({1, served})  # the re-run registered nothing: no second refit either
    assert aliases(settings) == state == {"challenger": 1, "champion": served}
    champion_moves = [m for m in history(settings) if m.alias == "champion"]
    assert [(m.from_version, m.to_version) for m in champion_moves] == [(None, served)]  # one promotion, one decision
    assert not second["promoted"] and read_json(tmp_path / "run" / "summary.json") == second
    extra_versions = len(versions(settings)) - len({1, served})
    report(record_property, data_lost_rows=0, bad_promotions=extra_versions + len(champion_moves) - 1)
