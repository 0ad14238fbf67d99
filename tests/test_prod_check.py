"""``make prod-check`` as a test: the production stack on PostgreSQL and Redis, one full cycle, clean-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def prodcheck_databases(prefix: str = "prodcheck_") -> set[str]:
    """The databases named with ``prefix``: each check's own (another check may run beside it)."""
    from infra.stack import Servers

    with Servers().connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))}


@pytest.mark.slow
def test_prod_check_runs_one_cycle_on_the_production_stack_and_cleans_up(tmp_path):
    pytest.importorskip("psycopg", reason="the prod extra (psycopg, redis) is part of make setup")
    from infra.stack import Servers

    Servers().ensure()  # as prod-check does: PostgreSQL and Redis up, started if down
    done = subprocess.run(
        [sys.executable, "infra/prod_check.py", "--home", str(tmp_path / "prod"), "--redis-db", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["passed"] and found["failed"] == []
    assert found["runner"] == "scheduler (LocalExecutor)"  # Airflow's scheduler ran the tasks, not dag.test()
    assert found["dag_run_state"] == found["airflow_db_run_state"] == "success"  # recorded in PostgreSQL
    # the first champion: promote-or-keep takes the promote path (refit, promote) and skips keep
    assert found["tasks"].pop("cycle.keep") == "skipped"
    assert found["tasks"]["cycle.refit"] == found["tasks"]["cycle.promote"] == "success"
    assert set(found["tasks"].values()) == {"success"} and found["airflow_db_task_instances"] >= 6
    # the gated challenger (v1) and its refit through the window's end (v2), which serves
    assert found["mlflow_versions"] == 2 and found["mlflow_aliases"]["champion"] == "2"
    assert found["mlflow_aliases"]["challenger"] == "1"
    assert found["feast_offline_rows"] == found["feast_rows_expected"] > 10_000
    assert found["redis_online_user_n_interactions"] > 0
    assert (found["online_store"], found["offline_store"]) == ("redis", "postgres")
    assert found["databases_prefix"].startswith("prodcheck_")
    assert prodcheck_databases(found["databases_prefix"] + "_") == set() and not (tmp_path / "prod").exists()  # nothing left behind


def test_the_celery_profile_points_the_executor_at_the_redis_broker_and_the_postgres_results(tmp_path):
    from infra.stack import AirflowServices, Stack

    stack = Stack(prefix="recsys", home=tmp_path, redis_db=9)
    env = stack.env("celery")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/10"  # not the online store's db
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg://postgres@127.0.0.1:5432/recsys_airflow"
    assert stack.env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and "AIRFLOW__CELERY__BROKER_URL" not in stack.env()
    services = AirflowServices(env, tmp_path / "logs", {"celery-train": "train"})
    cmd, worker_env = services.worker_command("celery-train", "train")
    assert cmd[1:] == ["celery", "worker", "--queues", "train", "--concurrency", "1", "--celery-hostname",
                       "celery-train@%h", "--skip-serve-logs", "--pid", str(tmp_path / "logs" / "celery-train.pid")]
    assert worker_env["RETRAIN_WORKER_NAME"] == "celery-train"
    assert worker_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "infra.stack.worker_hostname"


@pytest.mark.slow
def test_prod_check_on_celery_runs_each_task_on_its_queue_worker(tmp_path):
    pytest.importorskip("airflow.providers.celery", reason="the Celery provider is part of make setup")
    from infra.stack import Servers

    Servers().ensure()
    done = subprocess.run(
        [sys.executable, "infra/prod_check.py", "--executor", "celery", "--home", str(tmp_path / "prod"),
         "--redis-db", "12"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["passed"] and found["runner"] == "scheduler (CeleryExecutor, 2 workers)"
    assert found["tasks_by_worker"]["celery-train"] == ["cycle.train"]
    assert "cycle.pull" in found["tasks_by_worker"]["celery-default"] and len(found["tasks_by_worker"]) == 2
    assert found["queues"]["cycle.train"] == "train" and found["queues"]["cycle.gate"] == "default"
    assert found["databases_prefix"].startswith("prodcheck_")
    assert prodcheck_databases(found["databases_prefix"] + "_") == set() and not (tmp_path / "prod").exists()
