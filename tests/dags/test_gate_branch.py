"""Promote-or-keep is a branch in the DAG: it follows the gate's decision, and the join runs after either path.

The branch's choice is checked on its callable; the whole path under ``dag.test()``,
with the pipeline's cycle steps replaced by stubs that return what the real ones
would (the orchestration is under test here, not the training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def cycle_group():
    sys.path.insert(0, str(DAGS))
    try:
        from recsys_common import cycle_group

        yield cycle_group
    finally:
        sys.path.remove(str(DAGS))


@pytest.mark.parametrize("promote,path", [(True, "cycle.refit"), (False, "cycle.keep")])
def test_the_branch_follows_the_decision(cycle_group, promote, path):
    judged = {"promote": promote, "reason": "mean gain ... MDE 0.0300"}
    assert cycle_group.promote_or_keep.function(judged) == path
    assert path.split(".")[0] == cycle_group.GROUP


RUN_WITH_STUBS = """
import importlib.util, json, subprocess, sys
from pathlib import Path
from recsys_retrain import cycle

promote = sys.argv[2] == "promote"
run = {"run_dir": sys.argv[3], "start": "1998-01-05T00:00:00+00:00", "end": "1998-01-12T00:00:00+00:00",
       "rows_history": 10, "rows_window": 5}
judged = {**run, "promote": promote, "reason": "stub decision", "decision": "gate_decision.json"}
summary = {"promoted": promote, "version": 2}
stubs = {
    "pull": run, "validate": run, "drift": {"severity": "none", "html": None, "json": None},
    "calibrate": {"policy": "static", "plan": None, "path": "plan.json"}, "train": {"checkpoint": "model.pt"},
    "evaluate": {"per_user": "per_user_metrics.json"}, "judge": judged, "decided": summary,
    "refit": {"served_version": 3, "reason": "stub refit"}, "promote": summary, "keep": summary,
    "publish": {"version": 3, "users": 5, "written": True, "seconds": 0.1, "reason": "stub publication"},
    "record": {"mlflow_run_id": None, "alerts": []},
}
calls = []
for name, result in stubs.items():
    setattr(cycle, name, lambda *a, _name=name, _result=result, **k: calls.append(_name) or _result)
done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-2000:]
spec = importlib.util.spec_from_file_location("retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag_run = module.dag.test(run_conf={"window_start": run["start"], "window_end": run["end"]})
tasks = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
print(json.dumps({"run": str(dag_run.state), "tasks": tasks, "calls": calls}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "decision,taken,skipped",
    [("promote", ["refit", "promote", "publish"], ["keep"]), ("keep", ["keep"], ["refit", "promote", "publish"])],
)
def test_under_dag_test_one_path_runs_the_other_is_skipped_and_the_join_runs(tmp_path, decision, taken, skipped):
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "RETRAIN_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [sys.executable, "-c", RUN_WITH_STUBS, str(DAGS / "retrain.py"), decision, str(tmp_path / "run")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["run"] == "success", result
    assert all(result["tasks"][f"cycle.{t}"] == "success" for t in taken)
    assert result["tasks"]["cycle.decided"] == "success"
    assert {t: s for t, s in result["tasks"].items() if s != "success"} == {f"cycle.{t}": "skipped" for t in skipped}
    assert result["tasks"]["cycle.record"] == "success"  # the monitoring run is logged whichever path ran
    assert result["calls"][-3 - len(taken):] == ["judge", *taken, "decided", "record"]  # refit before promote, then publish
