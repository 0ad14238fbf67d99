"""``make prod-check`` as a test: the production stack on PostgreSQL and Redis, one full cycle, clean-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def prodcheck_databases() -> set[str]:
    from infra.stack import Servers

    with Servers().connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'prodcheck_%'")}


@pytest.mark.slow
def test_prod_check_runs_one_cycle_on_the_production_stack_and_cleans_up(tmp_path):
    pytest.importorskip("psycopg", reason="the prod extra (psycopg, redis) is part of make setup")
    from infra.stack import Servers

    Servers().ensure()  # as prod-check does: PostgreSQL and Redis up, started if down
    before = prodcheck_databases()
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
    assert prodcheck_databases() == before and not (tmp_path / "prod").exists()  # nothing left behind
