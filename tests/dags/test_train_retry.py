"""A training that fails after an epoch is retried by Airflow, and the retry resumes from the epoch checkpoint.

The real ``retrain_scheduled`` DAG runs under ``dag.test()`` with the real train task
(its retries, queue and pool as shipped) training a small synthetic world; the other
cycle steps are stubs that return what the real ones would (the retry is under test
here, not the gate). The first try fails right after its first epoch checkpoint is
written, as a worker lost mid-run would; Airflow retries the task, and the retry must
go on from epoch 2 instead of training epoch 1 again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.test_launch import cycle_folder

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import importlib.util, json, subprocess, sys
from datetime import timedelta
from pathlib import Path
from recsys_retrain import cycle
from recsys_retrain.train import loop

run = {"run_dir": sys.argv[2], "start": "1998-01-05T00:00:00+00:00", "end": "1998-01-12T00:00:00+00:00",
       "rows_history": 10, "rows_window": 5}
judged = {**run, "promote": False, "reason": "stub decision", "decision": "gate_decision.json"}
stubs = {
    "pull": run, "validate": run, "drift": {"severity": "none", "html": None, "json": None},
    "calibrate": {"policy": "static", "plan": None, "path": "plan.json"},
    "evaluate": {"per_user": "per_user_metrics.json"}, "judge": judged, "keep": {"promoted": False},
    "decided": {"promoted": False}, "record": {"mlflow_run_id": None, "alerts": []},
}
for name, result in stubs.items():
    setattr(cycle, name, lambda *a, _result=result, **k: _result)

saved, real_save = [], loop.save_epoch_checkpoint

def save_then_fail_once(*args, **kwargs):
    real_save(*args, **kwargs)
    saved.append({"epoch": kwargs["epoch"], "losses": list(kwargs["losses"])})
    if len(saved) == 1:
        raise RuntimeError("worker lost after the first epoch")

loop.save_epoch_checkpoint = save_then_fail_once
done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-2000:]
spec = importlib.util.spec_from_file_location("retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
train = module.dag.get_task("cycle.train")
shipped = {"retries": train.retries, "queue": train.queue, "pool": train.pool}
train.retry_delay = timedelta(0)  # the shipped delay (30 s) would only make the test wait
dag_run = module.dag.test(run_conf={"window_start": run["start"], "window_end": run["end"]})
tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
print(json.dumps({"run": str(dag_run.state), "train_state": str(tis["cycle.train"].state),
                  "train_tries": tis["cycle.train"].try_number, "shipped": shipped, "saved": saved}))
"""


@pytest.mark.slow
def test_a_failed_training_is_retried_and_resumes_after_its_last_epoch(tmp_path):
    run_dir = Path(cycle_folder(tmp_path / "cycle")["run_dir"])
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "RETRAIN_HOME": str(tmp_path / "home"),
        "RETRAIN_TRAIN__EPOCHS": "3", "RETRAIN_TRAIN__EMBEDDING_DIM": "8", "RETRAIN_TRAIN__BATCH_SIZE": "32",
        "RETRAIN_SCHEDULE__POLICY": "static", "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, "-c", RUN, str(ROOT / "dags" / "retrain.py"), str(run_dir)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["shipped"] == {"retries": 2, "queue": "train", "pool": "recsys_train"}
    assert (out["run"], out["train_state"], out["train_tries"]) == ("success", "success", 2)
    # try 1 saved epoch 1 and failed; try 2 went on with epochs 2 and 3 (a restart would save epoch 1 again)
    assert [s["epoch"] for s in out["saved"]] == [0, 1, 2]
    first_epoch_loss = out["saved"][0]["losses"][0]
    trained = json.loads((run_dir / "trained.json").read_text())["result"]
    assert len(trained["epoch_losses"]) == 3 and trained["epoch_losses"][0] == first_epoch_loss
    assert (run_dir / "model" / "model.pt").exists() and not list((run_dir / "model" / "checkpoints").glob("*.pt"))

    events = [json.loads(line) for line in (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()]
    assert [(e["event"], e["task_id"], e["try_number"], e["error"]) for e in events] == [
        ("task_retried", "cycle.train", 1, "RuntimeError: worker lost after the first epoch")]
