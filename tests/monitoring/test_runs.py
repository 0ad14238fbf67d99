"""recsys_retrain.monitoring.runs: one MLflow run per DAG run, found again by one search, read back as weeks."""

from __future__ import annotations

import mlflow
import pytest

from recsys_retrain import cycle
from recsys_retrain.monitoring import runs
from tests.monitoring.conftest import folder, pulled, window, write_week


def test_the_evidence_names_every_tested_signal_with_its_threshold_and_the_decisions(settings):
    summary = write_week(settings, 1)
    ev = runs.evidence(folder(settings, 1), "drift", summary)
    assert ev.params == {"window_start": window(1).split("/")[0], "window_end": window(1).split("/")[1], "kind": "drift"}
    for name in ("rating", "genre", "item_popularity_decile"):
        assert {f"drift.{name}.{k}" for k in ("value", "threshold", "p_value", "drifted")} <= set(ev.metrics)
    assert "drift.user_age.value" not in ev.metrics  # untested: nothing to chart
    assert ev.metrics["drift.genre.drifted"] == 1.0 and ev.metrics["drift.rating.drifted"] == 0.0
    assert ev.metrics["drift.genre.threshold"] == pytest.approx(0.1)
    assert (ev.tags["severity"], ev.tags["trigger"], ev.tags["gate.decision"]) == ("major", "retrain", "promote")
    assert ev.metrics["gate.served_version"] == 3.0 and ev.metrics["drift.severity_level"] == 2.0
    assert [a["event"] for a in ev.alerts] == ["drift"]  # at the trigger; a promotion raises nothing
    monitor = runs.evidence(folder(settings, 1), "monitor")
    assert monitor.metrics["served.ndcg"] == pytest.approx(0.21) and monitor.tags["monitor.decision"] == "keep"
    assert not [k for k in monitor.metrics if k.startswith("drift.")]


def test_each_dag_run_logs_one_run_and_one_search_returns_the_timeline(weeks_logged):
    from recsys_retrain.registry.client import configure

    settings = weeks_logged
    configure(settings)  # points MLflow at the settings' store, as every task does
    found = mlflow.search_runs(experiment_names=[f"{settings.model_name}-monitoring"],
                               filter_string="tags.monitoring = 'true'")
    assert len(found) == 6  # three weeks x (champion_monitor, drift_watch)
    assert sorted(found["tags.run_id"]) == sorted([f"monitor-{i}" for i in range(3)] + [f"drift-{i}" for i in range(3)])
    assert set(found["tags.kind"]) == {"monitor", "drift"}
    drift = found[found["tags.kind"] == "drift"].sort_values("tags.window_start")
    assert list(drift["tags.severity"]) == ["none", "major", "none"]
    assert list(drift["tags.trigger"]) == ["stop", "retrain", "stop"]  # the stopped weeks are there too
    assert drift["metrics.drift.genre.threshold"].notna().all()
    monitor = found[found["tags.kind"] == "monitor"].sort_values("tags.window_start")
    assert list(monitor["tags.monitor.decision"]) == ["keep", "keep", "revert"]
    assert list(monitor["metrics.served.ndcg"].round(4)) == [0.2, 0.21, 0.22]


def test_a_rerun_for_the_same_window_updates_its_run_and_alerts_once(weeks_logged):
    settings = weeks_logged
    again = cycle.record(pulled(settings, 1), "drift_watch", "drift-1-retried", write_week_summary(settings), settings=settings)
    assert again["updated"] and again["alerts"] == []
    table = runs.search(settings)
    assert len(table) == 6 and (table["tags.dag_id"] == "drift_watch").sum() == 3
    events = [line for line in (settings.home / "alerts.jsonl").read_text().splitlines()]
    assert len(events) == 2  # week 1's drift at the trigger, week 2's revert


def write_week_summary(settings):
    import json

    return json.loads((folder(settings, 1) / "summary.json").read_text())


def test_the_runs_read_back_as_the_weeks_the_cycle_folders_give(weeks_logged):
    from recsys_retrain.report_page import week_rows
    from recsys_retrain.timeline import week_result

    settings = weeks_logged
    from_mlflow = runs.weeks(runs.search(settings))
    from_folders = [week_result(folder(settings, i), window(i), "drift" if i == 1 else None, [], {}).to_dict()
                    for i in range(3)]
    assert week_rows(from_mlflow) == week_rows(from_folders)
    assert week_rows(from_mlflow)[1] == ["1998-01-12", 3001, "major", "genre, item_popularity_decile", "drift", "v1 0.2100",
                                         "0.2500", "promote v2 (refit v3 serves)", ""]
    assert [w["window"] for w in runs.weeks(runs.search(settings, "1998-01-12", "1998-01-26"))] == [window(1), window(2)]


def test_a_failed_task_gets_a_failed_run_to_carry_its_tag(weeks_logged):  # last: it adds a run to the module's store
    from types import SimpleNamespace

    from recsys_retrain.alerts import task_failed

    settings = weeks_logged
    ti = SimpleNamespace(dag_id="drift_watch", task_id="cycle.pull", run_id="r-9", try_number=3)
    task_failed({"ti": ti, "exception": RuntimeError("store down")}, settings)
    table = runs.search(settings)
    (row,) = table[table["tags.run_id"] == "r-9"].itertuples()
    run = mlflow.get_run(row.run_id)
    assert run.info.status == "FAILED" and '"task_id": "cycle.pull"' in run.data.tags["alert.task_failed"]
    assert len(runs.weeks(table)) == 3  # no window: not a week of the report
