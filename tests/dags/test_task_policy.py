"""Where and how long each task may run: queues, the training pool, timeouts, retries and the alert callbacks.

Every DAG file is parsed in a fresh interpreter (as the DAG processor does) and each
task's operator attributes are read back: what a Celery scheduler routes on, not what
the source says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = sorted((ROOT / "dags").glob("*.py"))

PROBE = """
import importlib.util, json, sys
from airflow.sdk import DAG

def names(callbacks):
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return [c.__name__ for c in callbacks if c]

sys.path.insert(0, sys.argv[1])
import recsys_common
out = {"pools": {k: list(v) for k, v in recsys_common.POOLS.items()}, "dags": {}}
for path in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location(path, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for d in vars(module).values():
        if isinstance(d, DAG):
            out["dags"][d.dag_id] = {t.task_id: {
                "queue": t.queue, "pool": t.pool, "retries": t.retries,
                "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "on_failure": names(t.on_failure_callback), "on_retry": names(t.on_retry_callback),
            } for t in d.tasks}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags"), *map(str, DAGS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def every_task(parsed: dict):
    for dag_id, tasks in parsed["dags"].items():
        for task_id, task in tasks.items():
            yield dag_id, task_id, task


def test_every_task_has_an_execution_timeout(parsed):
    timeouts = {(d, t): task["timeout"] for d, t, task in every_task(parsed)}
    assert len(timeouts) > 20  # all four DAGs were read
    assert all(seconds is not None and 0 < seconds <= 6 * 3600 for seconds in timeouts.values()), timeouts


def test_every_task_records_its_failures_and_retries_as_alerts(parsed):
    for dag_id, task_id, task in every_task(parsed):
        assert task["on_failure"] == ["task_failed"], (dag_id, task_id)
        assert task["on_retry"] == ["task_retried"], (dag_id, task_id)


def test_training_goes_to_the_train_queue_through_a_one_slot_pool_and_retries(parsed):
    trains = {dag_id: tasks["cycle.train"] for dag_id, tasks in parsed["dags"].items() if "cycle.train" in tasks}
    assert sorted(trains) == ["drift_watch", "retrain_scheduled"]
    for train in trains.values():
        assert (train["queue"], train["pool"]) == ("train", "recsys_train")
        assert train["retries"] >= 2  # a killed or failed run resumes from its epoch checkpoints
        assert train["timeout"] == 6 * 3600
    assert parsed["pools"] == {"recsys_train": [1, "one training at a time (the train task of every cycle)"]}


def test_every_other_task_runs_on_the_default_queue_outside_the_pool(parsed):
    others = {(d, t): (task["queue"], task["pool"]) for d, t, task in every_task(parsed) if t != "cycle.train"}
    assert set(others.values()) == {("default", "default_pool")}
    assert all(task["timeout"] == 3600 for d, t, task in every_task(parsed) if t != "cycle.train")


def test_the_pools_a_scheduler_needs_are_read_from_the_dag_folder(parsed):
    from recsys_retrain.airflow_local import dag_pools

    assert {name: list(pool) for name, pool in dag_pools().items()} == parsed["pools"]
