"""DAG files in the spirit of Airflow's own test_example_dags: they parse fast and cleanly.

Each file is imported in a fresh interpreter so that the heavy-import check sees
only what the DAG file itself pulls in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = sorted((Path(__file__).resolve().parents[2] / "dags").glob("*.py"))
HEAVY = ("torch", "torchrec", "feast", "mlflow", "evidently", "pandas")

PROBE = """
import importlib.util, json, sys, time
import airflow.sdk, pendulum  # Airflow's own import cost is not the DAG file's: the DAG processor has these loaded
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task, task_group  # lazy in airflow.sdk
path = sys.argv[1]
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - start
from airflow.sdk import DAG
dags = {d.dag_id: {t.task_id: sorted(t.downstream_task_ids) for t in d.tasks}
        for d in vars(module).values() if isinstance(d, DAG)}
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"seconds": seconds, "dags": dags, "heavy": heavy}))
"""


def parse(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), ",".join(HEAVY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=DAGS, ids=[p.name for p in DAGS])
def parsed(request) -> dict:
    return parse(request.param)


def test_there_are_dag_files():
    assert DAGS


def test_each_file_defines_at_least_one_dag(parsed):
    assert parsed["dags"]


def test_parsing_takes_under_a_second(parsed):
    assert parsed["seconds"] < 1.0


def test_no_heavy_library_is_imported_at_parse_time(parsed):
    assert parsed["heavy"] == []


def dags_of(name: str) -> dict:
    return parse(DAGS[[p.name for p in DAGS].index(name)])["dags"]


CYCLE = {
    "cycle.pull": ["cycle.validate"],
    "cycle.validate": [
        "cycle.calibrate", "cycle.drift", "cycle.evaluate", "cycle.gate", "cycle.record", "cycle.refit", "cycle.train",
    ],
    "cycle.drift": ["cycle.calibrate", "cycle.gate"],
    "cycle.calibrate": ["cycle.train"],
    "cycle.train": ["cycle.evaluate", "cycle.gate", "cycle.refit"],
    "cycle.evaluate": ["cycle.gate"],
    "cycle.gate": ["cycle.decided", "cycle.keep", "cycle.promote", "cycle.promote_or_keep", "cycle.refit"],
    "cycle.promote_or_keep": ["cycle.keep", "cycle.refit"],  # the promote path starts with the refit
    "cycle.refit": ["cycle.promote"],  # the champion moves only after the refit (or its fallback) is known
    "cycle.promote": ["cycle.publish"],  # the new champion's top-K reach the online store before the join
    "cycle.publish": ["cycle.decided"],
    "cycle.keep": ["cycle.decided"],
    "cycle.decided": ["cycle.record"],  # every run ends by logging its monitoring run, whichever path ran
    "cycle.record": [],
}


def test_retrain_dag_runs_the_cycle_in_order():
    assert dags_of("retrain.py")["retrain_scheduled"] == CYCLE


def test_drift_watch_runs_the_same_cycle_behind_a_short_circuit():
    assert dags_of("drift_watch.py")["drift_watch"] == {
        **CYCLE,
        "newest_window": ["cycle.pull"],
        "cycle.validate": [
            "cycle.calibrate", "cycle.drift", "cycle.evaluate", "cycle.gate", "cycle.record", "cycle.refit",
            "cycle.should_retrain", "cycle.train",
        ],
        "cycle.drift": ["cycle.calibrate", "cycle.gate", "cycle.should_retrain"],
        # every task up to the join: a stop skips them in one scheduling pass, and record still runs
        "cycle.should_retrain": [
            "cycle.calibrate", "cycle.decided", "cycle.evaluate", "cycle.gate", "cycle.keep", "cycle.promote",
            "cycle.promote_or_keep", "cycle.publish", "cycle.refit", "cycle.train",
        ],
    }


def test_champion_monitor_checks_each_new_window():
    assert dags_of("champion_monitor.py")["champion_monitor"] == {
        "newest_window": ["pull"],
        "pull": ["validate"],
        "validate": ["monitor", "record", "served"],
        "monitor": ["publish", "served"],  # a revert republishes the previous version's lists, and is what is scored
        "publish": [],
        "served": ["record"],  # the week's served quality goes into its monitoring run
        "record": ["refresh_report"],
        "refresh_report": [],
    }


def test_ingest_is_a_single_task():
    assert dags_of("ingest.py")["ingest"] == {"ingest_events": []}


SCHEDULES = """
import importlib.util, json, sys
from airflow.sdk import DAG
from airflow.sdk.bases.decorator import DecoratedOperator
out = {}
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(path, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for d in vars(module).values():
        if isinstance(d, DAG):
            out[d.dag_id] = {
                "assets": sorted(a.uri.rstrip("/") for a in getattr(getattr(d.timetable, "asset_condition", None), "objects", ())),
                "outlets": {t.task_id: sorted(o.uri.rstrip("/") for o in t.outlets) for t in d.tasks if t.outlets},
                "short_circuits": sorted(t.task_id for t in d.tasks if type(t).__name__.startswith("_ShortCircuit")),
                "branches": sorted(t.task_id for t in d.tasks if type(t).__name__.startswith("_Branch")),
                "trigger_rules": {t.task_id: getattr(t.trigger_rule, "value", t.trigger_rule) for t in d.tasks
                                  if getattr(t.trigger_rule, "value", t.trigger_rule) != "all_success"},
                "params": sorted(d.params.keys()),
                "unrolled": sorted(t.task_id for t in d.tasks if getattr(t, "multiple_outputs", False)),
            }
print(json.dumps(out))
"""


def test_ingest_announces_the_asset_that_the_watchers_are_scheduled_on():
    out = subprocess.run([sys.executable, "-c", SCHEDULES, *map(str, DAGS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dags = json.loads(out.stdout.strip().splitlines()[-1])
    assert dags["ingest"]["outlets"] == {"ingest_events": ["recsys://interactions"]}
    assert dags["drift_watch"]["assets"] == dags["champion_monitor"]["assets"] == ["recsys://interactions"]
    assert dags["retrain_scheduled"]["assets"] == dags["ingest"]["assets"] == []
    assert dags["drift_watch"]["short_circuits"] == ["cycle.should_retrain"]
    for dag_id in ("retrain_scheduled", "drift_watch"):
        assert {"epochs", "gate_min_delta", "gate_tolerance", "gate_policy", "drift_alpha", "schedule_policy",
                "refit"} <= set(dags[dag_id]["params"])
        # promote-or-keep is a branch, and the join after it runs whichever path was taken
        assert dags[dag_id]["branches"] == ["cycle.promote_or_keep"]
        # ... and every run, stopped or not, ends with its monitoring run
        assert dags[dag_id]["trigger_rules"] == {"cycle.decided": "none_failed_min_one_success", "cycle.record": "none_failed"}
    assert dags["champion_monitor"]["trigger_rules"] == {"record": "none_failed"}
    assert "retrain_on" in dags["drift_watch"]["params"]
    # a task's dict is one XCom, not one more per key (each push is an API call and a database write)
    assert all(d["unrolled"] == [] for d in dags.values())


RUN_DRIFT_WATCH = """
import json, os, subprocess, sys
from pathlib import Path
import pandas as pd
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData, load_movielens
from tests.conftest import cache_dir, copy_feature_repo
root = Path(sys.argv[1])
raw = load_movielens(cache_dir())
inter = raw.interactions[raw.interactions["timestamp"] < pd.Timestamp(sys.argv[3], tz="UTC")]
bootstrap_feature_repo(RawData(inter, raw.users, raw.items), copy_feature_repo(root / "features"), materialize=True)
done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-2000:]
import importlib.util
spec = importlib.util.spec_from_file_location("drift_watch", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
states = {}
for level in ("major", "minor"):
    run = module.dag.test(run_conf={"retrain_on": level, "epochs": 1})
    states[level] = {"run": str(run.state), "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}
print(json.dumps(states))
"""


def run_drift_watch(tmp_path: Path, slice_end: str) -> dict:
    """Both trigger levels of drift_watch under dag.test(), on MovieLens before ``slice_end``."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS[0].parent),
        "RETRAIN_HOME": str(tmp_path / "home"),
        "RETRAIN_FEATURE_REPO": str(tmp_path / "features"),
    }
    drift_watch = DAGS[[p.name for p in DAGS].index("drift_watch.py")]
    out = subprocess.run(
        [sys.executable, "-c", RUN_DRIFT_WATCH, str(tmp_path), str(drift_watch), slice_end],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_drift_watch_runs_on_the_newest_week_and_stops_or_retrains(tmp_path):
    states = run_drift_watch(tmp_path, "1997-10-27")  # 1997-10-27..11-03 drifts (new releases); the week before does not
    run_dir = tmp_path / "home" / "runs" / "19971020-19971027"  # the newest stored week
    trigger = json.loads((run_dir / "trigger.json").read_text())  # the last run's verdict
    assert trigger["retrain_on"] == "minor" and (run_dir / "drift" / "drift.json").exists()
    assert trigger["severity"] == "none" and not trigger["retrain"]  # this week does not drift: the run stops
    for state in states.values():
        assert state["run"] == "success", state
        assert {t: s for t, s in state["tasks"].items() if s != "success"} == {
            "cycle.calibrate": "skipped", "cycle.train": "skipped", "cycle.evaluate": "skipped", "cycle.gate": "skipped",
            "cycle.promote_or_keep": "skipped", "cycle.refit": "skipped", "cycle.promote": "skipped",
            "cycle.publish": "skipped", "cycle.keep": "skipped",
            "cycle.decided": "skipped",  # the record task after the join still ran: the stop is in MLflow too
        }
    assert not (run_dir / "summary.json").exists()
    from recsys_retrain.monitoring.runs import search
    from recsys_retrain.settings import Settings

    runs = search(Settings(home=tmp_path / "home"))  # both runs checked one window: one monitoring run, updated
    assert len(runs) == 1 and runs.iloc[0]["tags.dag_id"] == "drift_watch" and runs.iloc[0]["tags.trigger"] == "stop"
    assert runs.iloc[0]["metrics.drift.severity_level"] == 0 and runs.iloc[0]["tags.run_id"]


@pytest.mark.slow
def test_a_drifting_week_retrains_at_level_minor_but_not_at_major(tmp_path):
    states = run_drift_watch(tmp_path, "1997-11-17")  # the week of 1997-11-10 drifts 'minor' (day of week)
    run_dir = tmp_path / "home" / "runs" / "19971110-19971117"
    assert json.loads((run_dir / "trigger.json").read_text())["severity"] == "minor"
    assert states["major"]["run"] == "success" and states["major"]["tasks"]["cycle.calibrate"] == "skipped"
    assert states["minor"]["run"] == "success"
    skipped = {t: s for t, s in states["minor"]["tasks"].items() if s != "success"}
    assert skipped == {"cycle.keep": "skipped"}, states["minor"]  # the first model is promoted; the join ran
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["version"] == 1 and summary["promoted"]  # the first model of an empty registry
    assert summary["served_version"] == 2 and summary["refit"]["mode"] == "warm"  # its refit through the window serves
    lists = pd.read_parquet(tmp_path / "features" / "data" / "recommendations.parquet")  # publish ran after promote
    assert set(lists["rec_version"]) == {2} and len(lists) > 100 and set(lists["rec_source"]) == {"model"}
    assert all(len(items) == 10 for items in lists["rec_item_ids"])
    from recsys_retrain.monitoring.runs import search
    from recsys_retrain.settings import Settings

    runs = search(Settings(home=tmp_path / "home"))  # the stop at 'major', then the retrain at 'minor', updated in place
    assert len(runs) == 1 and runs.iloc[0]["tags.trigger"] == "retrain" and runs.iloc[0]["tags.gate.decision"] == "promote"
    events = [json.loads(line)["event"] for line in (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()]
    assert events == ["drift"]  # the drift at the trigger, once
