"""``make prod-check``: bring the production stack up and run one full retraining cycle against it.

1. PostgreSQL and Redis at 127.0.0.1 (default ports), started if down;
2. three fresh databases (Airflow metadata, MLflow backend, Feast registry + offline
   store) and a Redis db index for the Feast online store;
3. an MLflow tracking server on its database with an artifact folder, on 127.0.0.1;
4. Airflow's metadata migrated onto PostgreSQL (LocalExecutor configured);
5. the Feast repository (``feature_store.prod.yaml``) filled from a MovieLens slice;
6. Airflow's API server, DAG processor and scheduler on that database; the retraining
   DAG is triggered for one weekly window with ``airflow dags trigger`` and the
   scheduler runs its tasks: LocalExecutor, or with ``--executor celery``
   CeleryExecutor (Redis broker, the Airflow database as result backend) and two Celery
   workers, one per queue (``default``, ``train``) (``--runner dag-test`` runs it with
   ``dag.test`` in one process instead);
7. checks: the run succeeded, MLflow holds the registered version and its champion
   alias, Airflow's database holds the run, Redis serves the online features; under
   Celery, ``cycle.train`` ran on the train queue's worker and every other task on the
   default queue's (each task instance's ``hostname`` is its worker's name);
8. everything it started is stopped and the databases dropped (``--keep`` leaves them).

Prints one JSON line with what it found and exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess  # nosec B404  # runs this interpreter with an argument list
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.stack import (  # noqa: E402
    REPO,
    AirflowServices,
    MlflowServer,
    Servers,
    Stack,
    airflow_migrate,
    copy_feature_repo,
    free_port,
)

log = logging.getLogger("prod-check")
LOG_FILE = REPO / ".retrain" / "prod-check.log"

RUN_DAG = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("retrain_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.dag.test(run_conf={"window_start": sys.argv[2], "window_end": sys.argv[3]})
print(json.dumps({"dag_id": module.dag.dag_id, "run_id": run.run_id, "state": str(run.state),
                  "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python infra/prod_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=REPO / ".retrain" / "prod-check", help="folder for the check's files")
    p.add_argument("--window-start", default="1997-11-10", help="first day of the retrained window (MovieLens time)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the cycle")
    p.add_argument("--processes", type=int, default=1, help="training processes (above 1: torchrun)")
    p.add_argument("--policy", default="static", choices=["static", "adaptive"],
                   help="training schedule: static keeps the check short; adaptive is the production default")
    p.add_argument("--runner", default="scheduler", choices=["scheduler", "dag-test"],
                   help="scheduler: Airflow's scheduler (LocalExecutor) runs the triggered DAG; dag-test: dag.test() in one process")
    p.add_argument("--executor", default="local", choices=["local", "celery"],
                   help="local: LocalExecutor; celery: CeleryExecutor (Redis broker, PostgreSQL results) with two "
                        "workers on this machine, one per queue (default, train)")
    p.add_argument("--redis-db", type=int, default=9, help="Redis db index of the online store (the broker takes the next)")
    p.add_argument("--keep", action="store_true", help="leave the MLflow server, databases and files in place")
    return p.parse_args(argv)


def bootstrap_features(stack: Stack, env: dict[str, str], window_end: str) -> int:
    """Feast registry, offline store (PostgreSQL) and online store (Redis) from MovieLens up to ``window_end``."""
    os.environ.update(env)  # Feast reads the FEAST_* variables when it loads feature_store.prod.yaml
    import pandas as pd

    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.data.load import RawData, load_movielens

    raw = load_movielens(REPO / ".retrain" / "cache")
    inter = raw.interactions[raw.interactions["timestamp"] < pd.Timestamp(window_end, tz="UTC")]
    bootstrap_feature_repo(RawData(inter, raw.users, raw.items), copy_feature_repo(stack.feature_repo), materialize=True)
    return len(inter)


def run_dag(env: dict[str, str], start: str, end: str) -> dict:
    """The retrain DAG in a fresh process; its output goes to ``.retrain/prod-check.log`` (kept)."""
    done = subprocess.run(  # nosec B603  # this interpreter, a fixed script
        [sys.executable, "-c", RUN_DAG, str(REPO / "dags" / "retrain.py"), start, end],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    LOG_FILE.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"the DAG run failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


DAG_ID = "retrain_scheduled"
FINISHED = ("success", "failed")
# CeleryExecutor: one worker per queue, named after it (the task instances' hostname)
WORKERS = {"celery-default": "default", "celery-train": "train"}
EXECUTORS = {"local": "scheduler (LocalExecutor)", "celery": "scheduler (CeleryExecutor, 2 workers)"}


def run_scheduled(stack: Stack, env: dict[str, str], start: str, end: str, timeout: float = 1800,
                  executor: str = "local") -> dict:
    """The retrain DAG triggered through the CLI and run by Airflow's scheduler on PostgreSQL.

    With ``executor="celery"`` two Celery workers run the tasks, one per queue. The
    DAG's cron is switched off (``RETRAIN_DAG_SCHEDULE=none``) so unpausing it does not
    also start a run for the real calendar's latest week. ``cycle_s`` is the run's time
    from the trigger to its end.
    """
    workers = WORKERS if executor == "celery" else None
    services = AirflowServices({**env, "RETRAIN_DAG_SCHEDULE": "none"}, stack.home / "airflow-logs", workers).start()
    run_id = f"prodcheck__{start[:10]}"
    try:
        deadline = time.monotonic() + timeout
        while not _db_value(stack, "SELECT count(*) FROM dag WHERE dag_id = %s", DAG_ID):
            services.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DAG processor did not register {DAG_ID} in {timeout:.0f}s")
            time.sleep(2)
        log.info("%s runs %s, triggered as %s", EXECUTORS[executor], DAG_ID, run_id)
        services.cli("dags", "unpause", DAG_ID)
        triggered = time.monotonic()
        services.cli("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf",
                     json.dumps({"window_start": start, "window_end": end}))
        state = None
        while state not in FINISHED:
            services.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the triggered run {run_id} did not finish in {timeout:.0f}s (state {state})")
            time.sleep(3)
            state = _db_value(stack, "SELECT state FROM dag_run WHERE run_id = %s", run_id)
        cycle_s = time.monotonic() - triggered
        with stack.servers.connect(stack.db("airflow")) as conn:
            rows = conn.execute("SELECT task_id, state, hostname, queue FROM task_instance WHERE run_id = %s",
                                (run_id,)).fetchall()
    finally:
        services.stop()
        LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
        LOG_FILE.write_text("".join(p.read_text(errors="replace") for p in sorted((stack.home / "airflow-logs").glob("*.log"))))
    ran = [(task, host, queue) for task, task_state, host, queue in rows if task_state == "success"]
    return {"dag_id": DAG_ID, "run_id": run_id, "state": state, "tasks": {r[0]: r[1] for r in rows},
            "runner": EXECUTORS[executor], "executor": executor, "cycle_s": round(cycle_s, 1),
            "tasks_by_worker": tasks_by_worker(ran), "queues": {task: queue for task, _, queue in ran}}


def tasks_by_worker(ran: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """``{hostname: [task ids]}`` of the tasks that ran (Celery workers record their own names).

    Example:
        >>> tasks_by_worker([("cycle.pull", "celery-default", "default"), ("cycle.train", "celery-train", "train")])
        {'celery-default': ['cycle.pull'], 'celery-train': ['cycle.train']}
    """
    out: dict[str, list[str]] = {}
    for task, host, _ in ran:
        out.setdefault(host or "?", []).append(task)
    return {host: sorted(tasks) for host, tasks in sorted(out.items())}


def routed(found: dict) -> bool:
    """Under Celery: ``cycle.train`` ran on the train queue's worker alone, every other task on the default one.

    Example:
        >>> routed({"executor": "celery", "tasks_by_worker": {"celery-default": ["cycle.pull"],
        ...         "celery-train": ["cycle.train"]}, "queues": {"cycle.pull": "default", "cycle.train": "train"}})
        True
        >>> routed({"executor": "celery", "tasks_by_worker": {"celery-default": ["cycle.pull", "cycle.train"]},
        ...         "queues": {"cycle.pull": "default", "cycle.train": "train"}})
        False
    """
    if found.get("executor") != "celery":
        return True
    by_worker = found.get("tasks_by_worker", {})
    expected = {t: ("celery-train" if t == "cycle.train" else "celery-default") for t in found.get("queues", {})}
    actual = {t: w for w, tasks in by_worker.items() for t in tasks}
    queues_ok = all(q == WORKERS[expected[t]] for t, q in found.get("queues", {}).items())
    return bool(expected) and "cycle.train" in expected and actual == expected and queues_ok


def _db_value(stack: Stack, query: str, *params):
    with stack.servers.connect(stack.db("airflow")) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def checks(stack: Stack, run: dict, rows: int) -> dict:
    """What the stack holds after the run: MLflow registry, Airflow metadata, Feast online store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)
    models = {m.name: m for m in client.search_registered_models()}
    with stack.servers.connect(stack.db("airflow")) as conn:
        state = conn.execute("SELECT state FROM dag_run WHERE run_id = %s", (run["run_id"],)).fetchone()
        tasks = conn.execute("SELECT count(*) FROM task_instance WHERE run_id = %s", (run["run_id"],)).fetchone()[0]
    with stack.servers.connect(stack.db("feast")) as conn:
        offline_rows = conn.execute('SELECT count(*) FROM "interactions"').fetchone()[0]
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(stack.feature_repo), fs_yaml_file=stack.feature_repo / "feature_store.prod.yaml")
    online = store.get_online_features(
        features=store.get_feature_service("two_tower_v2"), entity_rows=[{"user_id": 1, "item_id": 1}]
    ).to_dict()
    return {
        **{k: run[k] for k in ("executor", "cycle_s", "tasks_by_worker", "queues") if k in run},
        "runner": run.get("runner", "dag.test"),
        "dag_run_state": run["state"],
        "tasks": run["tasks"],
        "airflow_db_run_state": state[0] if state else None,
        "airflow_db_task_instances": tasks,
        "mlflow_versions": len(client.search_model_versions("name='two_tower'")) if "two_tower" in models else 0,
        "mlflow_aliases": dict(models["two_tower"].aliases) if "two_tower" in models else {},
        "feast_offline_rows": offline_rows,
        "feast_rows_expected": rows,
        "redis_online_user_n_interactions": online["user_n_interactions"][0],
        "online_store": store.config.online_store.type,
        "offline_store": store.config.offline_store.type,
    }



# promote-or-keep: the tasks of the path not taken are skipped
PATHS = {"promote": ("cycle.refit", "cycle.promote"), "keep": ("cycle.keep",)}


def tasks_ran(tasks: dict[str, str]) -> bool:
    """Every task succeeded, but for the tasks of the one path of promote-or-keep that the branch skipped.

    Example:
        >>> tasks_ran({"cycle.gate": "success", "cycle.refit": "success", "cycle.promote": "success",
        ...            "cycle.keep": "skipped"})
        True
        >>> tasks_ran({"cycle.refit": "skipped", "cycle.promote": "success", "cycle.keep": "skipped"})
        False
    """
    taken = [name for name, path in PATHS.items() if all(tasks.get(t) == "success" for t in path)]
    if len(taken) != 1:
        return False
    skipped = {t for name, path in PATHS.items() if name != taken[0] for t in path}
    return all(state == "success" or (task in skipped and state == "skipped") for task, state in tasks.items())


def passed(found: dict) -> list[str]:
    """The failed checks' names (empty: all passed)."""
    failed = []
    if found["dag_run_state"] != "success" or found["airflow_db_run_state"] != "success":
        failed.append("dag run")
    if not tasks_ran(found["tasks"]) or found["airflow_db_task_instances"] < 6:
        failed.append("tasks")
    if found["mlflow_versions"] < 1 or "champion" not in found["mlflow_aliases"]:
        failed.append("mlflow registry")
    if found["feast_offline_rows"] != found["feast_rows_expected"]:
        failed.append("feast offline store")
    if not found["redis_online_user_n_interactions"] or (found["online_store"], found["offline_store"]) != ("redis", "postgres"):
        failed.append("feast online store")
    if not routed(found):
        failed.append("celery queues")
    return failed


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s prod-check %(message)s")
    args = parse_args(argv)
    if args.executor == "celery" and args.runner != "scheduler":
        raise SystemExit("--executor celery needs --runner scheduler (dag.test runs every task in its own process)")
    import pandas as pd

    start = pd.Timestamp(args.window_start, tz="UTC")
    end = start + pd.Timedelta(days=7)
    home = args.home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    stack = Stack(prefix=f"prodcheck_{uuid.uuid4().hex[:8]}", home=home, redis_db=args.redis_db, mlflow_port=free_port())
    env = {**stack.env(args.executor), "RETRAIN_TRAIN__EPOCHS": str(args.epochs), "RETRAIN_TRAIN__PROCESSES": str(args.processes),
           "RETRAIN_SCHEDULE__POLICY": args.policy, "RETRAIN_DRIFT__PERMUTATIONS": "200"}
    servers: Servers = stack.servers
    steps = [
        ("PostgreSQL and Redis", servers.ensure),
        ("databases", stack.create_databases),
    ]
    mlflow = MlflowServer(stack)
    found: dict = {}
    began = time.monotonic()
    try:
        for name, step in steps:
            log.info("%s", name)
            step()
        log.info("MLflow server on PostgreSQL at %s", stack.tracking_uri)
        mlflow.start()
        log.info("Airflow metadata on PostgreSQL (db migrate)")
        airflow_migrate(env)
        log.info("Feast: PostgreSQL registry + offline store, Redis online store")
        rows = bootstrap_features(stack, env, end.isoformat())  # the window itself must be stored
        log.info("retrain DAG for %s .. %s", start.date(), end.date())
        if args.runner == "scheduler":
            run = run_scheduled(stack, env, start.isoformat(), end.isoformat(), executor=args.executor)
        else:
            run = run_dag(env, start.isoformat(), end.isoformat())
        found = checks(stack, run, rows)
    finally:
        mlflow.stop()
        if not args.keep:
            stack.drop(broker=args.executor == "celery")
            shutil.rmtree(home, ignore_errors=True)
    failed = passed(found)
    print(json.dumps({"passed": not failed, "failed": failed, "seconds": round(time.monotonic() - began, 1),
                      "databases_prefix": stack.prefix, **found}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
