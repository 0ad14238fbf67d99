"""The cycle functions the new DAGs call: overrides, the newest window, the drift trigger, the monitor.

Real Feast, TorchRec and MLflow on a six-week slice of MovieLens-100K, in a
private home and feature repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from recsys_retrain import cycle
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.registry import candidates, promotion
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings
from tests.conftest import copy_feature_repo

END = "1997-11-03"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, movielens) -> Settings:
    """Interactions before END in a fresh feature repository; 1 training epoch."""
    root = tmp_path_factory.mktemp("cycle")
    repo = copy_feature_repo(root / "features")
    inter = movielens.interactions[movielens.interactions["timestamp"] < pd.Timestamp(END, tz="UTC")]
    bootstrap_feature_repo(RawData(inter, movielens.users, movielens.items), repo)
    s = Settings(home=root / "home", feature_repo=repo, train={"epochs": 1, "embedding_dim": 8})
    yield s
    mlflow.set_tracking_uri(None)


def test_overrides_reach_the_nested_settings_and_keep_the_rest():
    s = Settings(home="/tmp/unused")
    o = cycle.with_overrides(s, {"train": {"epochs": 3}, "gate": {"min_delta": 0.01, "tolerance": 0.0}})
    assert (o.train.epochs, o.gate.min_delta, o.gate.tolerance) == (3, 0.01, 0.0)
    assert o.train.batch_size == s.train.batch_size and o.home == s.home and s.train.epochs != 3
    assert cycle.with_overrides(s, None) is s and cycle.with_overrides(s, {}) is s


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"train": {"epochs": 0}}, "train.epochs=0"),
        ({"gate": {"tolerance": -1}}, "gate.tolerance=-1"),
        ({"train": {"epochs": "many"}}, "train.epochs='many'"),
        ({"train": {"epoch": 3}}, "train.epoch: no such setting"),
        ({"nope": {"x": 1}}, "'nope': not a settings section"),
        ({"home": {"x": 1}}, "'home': not a settings section"),
    ],
)
def test_a_bad_override_fails_with_one_line_naming_it(overrides, names):
    with pytest.raises(PipelineError) as err:
        cycle.with_overrides(Settings(home="/tmp/unused"), overrides)
    assert names in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("severity", "level", "retrain"),
    [("none", None, False), ("minor", None, True), ("minor", "major", False), ("major", "major", True)],
)
def test_should_retrain_compares_severity_with_the_trigger_level(tmp_path, severity, level, retrain):
    pulled = {"run_dir": str(tmp_path), "start": "1997-10-27T00:00:00+00:00", "end": "1997-11-03T00:00:00+00:00"}
    verdict = cycle.should_retrain(pulled, {"severity": severity, "reason": "r"}, level)
    assert verdict["retrain"] is retrain and verdict["retrain_on"] == (level or "minor")
    assert json.loads((tmp_path / "trigger.json").read_text()) == verdict


def test_should_retrain_refuses_an_unknown_level(tmp_path):
    with pytest.raises(PipelineError, match="retrain_on"):
        cycle.should_retrain({"run_dir": str(tmp_path), "start": "a", "end": "b"}, {"severity": "none", "reason": ""}, "none")


def test_window_is_the_newest_stored_week_or_the_one_asked_for(sandbox):
    newest = cycle.window(settings=sandbox)
    assert newest == {"start": "1997-10-27T00:00:00+00:00", "end": "1997-11-03T00:00:00+00:00"}
    assert cycle.window("1997-10-27", days=14, settings=sandbox)["start"] == "1997-10-13T00:00:00+00:00"
    with pytest.raises(PipelineError, match="not a date"):
        cycle.window("last tuesday", settings=sandbox)


def test_an_empty_window_fails_at_pull_in_one_line(sandbox):
    with pytest.raises(PipelineError, match="window 1999-01-04..1999-01-11 holds no interactions") as err:
        cycle.pull("1999-01-04", "1999-01-11", settings=sandbox)
    assert "\n" not in str(err.value)


def test_the_pull_reads_train_history_days_before_the_window(sandbox):
    """The history is bounded by the setting; the default (365 days) covers all of MovieLens-100K."""
    short = cycle.pull("1997-10-27", "1997-11-03", settings=sandbox.model_copy(update={
        "train": sandbox.train.model_copy(update={"history_days": 7})}))
    history = pd.read_parquet(Path(short["run_dir"]) / "history.parquet")
    assert history.timestamp.min() >= pd.Timestamp("1997-10-20", tz="UTC") and short["rows_history"] == len(history) > 0
    full = cycle.pull("1997-10-27", "1997-11-03", settings=sandbox)
    assert sandbox.train.history_days == 365 and full["rows_history"] > short["rows_history"]
    assert pd.read_parquet(Path(full["run_dir"]) / "history.parquet").timestamp.min() < pd.Timestamp("1997-09-21", tz="UTC")


@pytest.mark.slow
def test_monitor_scores_champion_against_previous_and_records_the_decision(sandbox):
    s = sandbox
    w = cycle.window(settings=s)
    pulled = cycle.validate(cycle.pull(w["start"], w["end"], settings=s), settings=s)

    first = cycle.monitor(pulled, settings=s)  # nothing registered yet
    assert not first["revert"] and "no champion and previous pair" in first["reason"]

    from recsys_retrain.train.checkpoints import load_checkpoint

    versions = []
    for seed in (0, 1):  # two registered versions (one registry version per window): previous and champion
        model = cycle.train(pulled, settings=s, overrides={"train": {"seed": seed}})
        cand = candidates.log_candidate(
            load_checkpoint(Path(model["checkpoint"])), settings=s, window=f"w{seed}", params={}, metrics={}
        )
        versions.append(cand.version)
        promotion.promote(s, cand.version, reason=f"test {seed}")

    decision = cycle.monitor(pulled, settings=s)
    assert (decision["champion_version"], decision["previous_version"]) == (versions[1], versions[0])
    assert decision["window"] == f"{w['start']}/{w['end']}" and len(decision["windows"]) == 1
    assert decision["consecutive"] in (0, 1) and not decision["revert"]  # one window never reverts (needs 2)
    assert json.loads((Path(pulled["run_dir"]) / "monitor.json").read_text()) == decision

    again = cycle.monitor(pulled, settings=s)  # a retried task: same window, same record
    assert again == decision
    from recsys_retrain.monitor import recorded_checks

    assert len(recorded_checks(s, versions[1])) == 1


@pytest.mark.slow
def test_adaptive_cycle_calibrates_trains_under_the_scheduler_and_fills_the_knowledge_base(sandbox):
    s = sandbox
    w = cycle.window(settings=s)
    pulled = cycle.validate(cycle.pull(w["start"], w["end"], settings=s), settings=s)
    overrides = {"train": {"epochs": 4}, "schedule": {"policy": "adaptive"}}

    plan = cycle.calibrate(pulled, {"severity": "minor", "drifted_share": 0.3}, settings=s, overrides=overrides)
    assert plan["policy"] == "adaptive" and plan["plan"]["source"] == "rules"
    assert {r["field"] for r in plan["plan"]["reasons"]} >= {"dense_lr", "sparse_lr", "max_epochs", "decay_floor"}
    assert json.loads((Path(pulled["run_dir"]) / "plan.json").read_text())["plan"] == plan["plan"]

    trained = cycle.train(pulled, settings=s, overrides=overrides, plan=plan)
    trace = json.loads(Path(trained["trace"]).read_text())
    assert trace["plan"] == plan["plan"] and trace["events"], "the scheduler recorded no event"
    assert len(trace["epochs"]) == len(trained["epoch_losses"]) <= plan["plan"]["max_epochs"]
    assert all(e["validation"] is not None for e in trace["epochs"])
    assert trained["best_validation"] == max(e["validation"] for e in trace["epochs"])

    again = cycle.calibrate(pulled, {"severity": "minor", "drifted_share": 0.3}, settings=s, overrides=overrides)
    assert again["kb_records"] >= 1 and again["plan"]["source"] == "knowledge_base"
    assert "similar past runs" in next(r["why"] for r in again["plan"]["reasons"] if r["field"] == "dense_lr")


def test_static_policy_has_no_plan_and_trains_as_configured(sandbox):
    w = cycle.window(settings=sandbox)
    pulled = cycle.validate(cycle.pull(w["start"], w["end"], settings=sandbox), settings=sandbox)
    plan = cycle.calibrate(pulled, None, settings=sandbox, overrides={"schedule": {"policy": "static"}})
    assert plan["plan"] is None
    trained = cycle.train(pulled, settings=sandbox, plan=plan)
    assert len(trained["epoch_losses"]) == sandbox.train.epochs and trained["best_validation"] is None


@pytest.mark.slow
def test_the_gate_logs_plan_trace_curves_and_metric_histories_with_the_candidate(sandbox, tmp_path):
    from mlflow import MlflowClient

    s = sandbox.model_copy(update={"home": tmp_path / "home"})  # an empty registry: no champion from other tests
    w = cycle.window(settings=s)
    pulled = cycle.validate(cycle.pull(w["start"], w["end"], settings=s), settings=s)
    overrides = {"train": {"epochs": 3}, "schedule": {"policy": "adaptive", "knowledge_base": False}}
    drift = cycle.drift(pulled, settings=s)
    plan = cycle.calibrate(pulled, drift, settings=s, overrides=overrides)
    trained = cycle.train(pulled, settings=s, overrides=overrides, plan=plan)
    evaluated = cycle.evaluate(pulled, trained, settings=s)
    summary = cycle.gate(pulled, drift, trained, evaluated, settings=s, overrides=overrides)

    client = MlflowClient(s.mlflow_uri)
    version = client.get_model_version(s.model_name, str(summary["version"]))
    names = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"plan.json", "trace.json", "curves.png"} <= names
    history = client.get_metric_history(version.run_id, "curve.validation_ndcg")
    assert len(history) == len(trained["epoch_losses"])
    run = client.get_run(version.run_id)
    assert run.data.params["schedule.policy"] == "adaptive" and "scheduler_events" in run.data.metrics


@pytest.mark.slow
def test_a_window_without_cold_users_crosses_every_task_boundary_as_valid_json(sandbox, tmp_path):
    """Every user of the window is warm: the cold-user mean is null with a note, never NaN, through evaluate and gate."""
    s = sandbox.model_copy(update={"home": tmp_path / "home"})
    w = cycle.window(settings=s)
    pulled = cycle.validate(cycle.pull(w["start"], w["end"], settings=s), settings=s)
    run = Path(pulled["run_dir"])
    history, holdout = pd.read_parquet(run / "history.parquet"), pd.read_parquet(run / "holdout.parquet")
    holdout[holdout["user_id"].isin(history["user_id"])].to_parquet(run / "holdout.parquet", index=False)
    trained = cycle.train(pulled, settings=s, overrides={"schedule": {"policy": "static"}})
    evaluated = cycle.evaluate(pulled, trained, settings=s)
    json.dumps(evaluated, allow_nan=False)  # what Airflow's XCom accepts
    assert evaluated["challenger"]["cold_ndcg_at_10"] is None
    assert "no cold users" in evaluated["challenger"]["notes"]["cold_ndcg_at_10"]
    summary = cycle.gate(pulled, {"severity": "none", "html": None, "json": None}, trained, evaluated, settings=s)
    json.dumps(summary, allow_nan=False)
    assert summary["promoted"]  # the first model, judged on the floor and every non-empty guardrail
