"""Fault: ``retrain_scheduled`` and ``drift_watch`` train the same window at once.

One trains; the other waits on the window's lock and reuses its result, so the cycle
folder holds one model and the registry one version. A re-run after the window's
decision never trains again, whatever its settings.
"""

from __future__ import annotations

import os

import pytest

from recsys_retrain import cycle
from tests.faults.conftest import copy_cycle, finish, report, tiny_settings, train_task, versions

NO_DRIFT = {"severity": "none", "html": None, "json": None}


@pytest.mark.slow
def test_two_trainings_of_one_window_race_and_one_reuses_the_other(pulled_template, tmp_path, record_property):
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", train={"epochs": 2, "embedding_dim": 8})
    pulled = copy_cycle(pulled_template, tmp_path / "run")
    racers = [train_task(pulled, settings) for _ in range(2)]
    outcomes = [finish(proc) for proc in racers]
    assert [code for code, _, _ in outcomes] == [0, 0], [err[-1500:] for _, _, err in outcomes]
    results = [result for _, result, _ in outcomes]
    assert sorted("reused" in r for r in results) == [False, True]  # one trained, the other waited and reused it
    first, second = results
    assert first["checkpoint"] == second["checkpoint"] and first["epoch_losses"] == second["epoch_losses"]
    checkpoint_written = os.stat(first["checkpoint"]).st_mtime_ns

    evaluated = cycle.evaluate(pulled, first, settings)
    summary = cycle.gate(pulled, NO_DRIFT, first, evaluated, settings)
    again = cycle.train(pulled, settings, overrides={"train": {"epochs": 3}})  # other settings, after the decision
    assert again["reused"] and again["epoch_losses"] == first["epoch_losses"]
    assert os.stat(first["checkpoint"]).st_mtime_ns == checkpoint_written  # the registered version's model untouched
    assert cycle.gate(pulled, NO_DRIFT, again, cycle.evaluate(pulled, again, settings), settings)["version"] == summary["version"]
    assert versions(settings) == sorted({summary["version"], summary["served_version"] or summary["version"]})
    report(record_property, data_lost_rows=0, bad_promotions=0)


def test_other_settings_before_any_decision_train_again(pulled_template, tmp_path):
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", train={"epochs": 1, "embedding_dim": 8})
    pulled = copy_cycle(pulled_template, tmp_path / "run")
    first = cycle.train(pulled, settings)
    assert "reused" not in first
    assert cycle.train(pulled, settings)["reused"]  # same settings: the same model
    longer = cycle.train(pulled, settings, overrides={"train": {"epochs": 2}})
    assert "reused" not in longer and len(longer["epoch_losses"]) == 2
