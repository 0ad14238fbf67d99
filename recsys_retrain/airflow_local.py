"""Running this project's DAGs in-process, as ``retrain demo`` and the timeline replay do.

One place owns what a local run of Airflow needs: an Airflow home under the
pipeline's home (SQLite metadata), the shipped DAG folder, a migrated database, DAG
files loaded by path, the DAGs' pools, and library logging turned down so the user's
terminal shows progress rather than planner hints. Under ``deployment = "production"`` the Airflow
home, metadata database and DAG folder are the ones the environment configures, and
nothing here overrides them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import subprocess  # nosec B404  # runs this venv's airflow with an argument list, no shell
import sys
import tempfile
import warnings
from pathlib import Path

from recsys_retrain.errors import PipelineError
from recsys_retrain.resources import dags_folder
from recsys_retrain.settings import Settings


def quiet_libraries() -> None:
    """Keeps library chatter (planner hints, deprecations) out of the user's terminal."""
    warnings.filterwarnings("ignore")
    logging.captureWarnings(False)
    for name in ("torchrec", "torch", "mlflow", "feast", "evidently", "alembic", "airflow", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def airflow_env(settings: Settings) -> Path:
    """Points Airflow at a home under the pipeline's home and the shipped DAG folder; returns the Airflow home.

    In production the environment's Airflow configuration is kept as it is.
    """
    if settings.deployment == "production":
        return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    home = (settings.home / "airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder(settings))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    return home


def migrate_airflow_db(settings: Settings) -> None:
    """``airflow db migrate`` once per Airflow home (it is idempotent, but takes seconds)."""
    marker = airflow_env(settings) / ".migrated"
    if marker.exists():
        return
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)  # nosec B603  # fixed args
    if done.returncode != 0:
        raise PipelineError(f"airflow db migrate failed: {done.stderr.strip().splitlines()[-1:]}")
    marker.touch()


def load_dag(name: str = "retrain", settings: Settings | None = None):
    """The ``dag`` object of ``<dags folder>/<name>.py``, imported by path (the folder is not a package)."""
    folder = dags_folder(settings or Settings())
    spec = importlib.util.spec_from_file_location(f"dags.{name}", folder / f"{name}.py")
    if spec is None or spec.loader is None:
        raise PipelineError(f"no DAG file {name}.py in {folder}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def dag_pools(settings: Settings | None = None) -> dict[str, tuple[int, str]]:
    """The pools the DAGs use, ``{name: (slots, description)}`` (``recsys_common.POOLS`` of the DAG folder)."""
    folder = str(dags_folder(settings or Settings()))
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        return dict(importlib.import_module("recsys_common").POOLS)
    finally:
        if added:
            sys.path.remove(folder)


def create_pools(env: dict[str, str] | None = None, settings: Settings | None = None) -> dict[str, tuple[int, str]]:
    """``airflow pools import`` of the DAGs' pools into the metadata database that ``env`` points at.

    A scheduler leaves a task whose pool does not exist unscheduled (``dag.test()``
    ignores pools), so every deployment that runs a scheduler creates them after
    ``airflow db migrate``; importing again updates the slots. Returns the pools.
    With ``env``, the DAG folder is read in a child process with that environment, so
    this process never loads Airflow's configuration of another home.
    """
    if env is not None:
        done = subprocess.run(  # nosec B603  # this interpreter, this module
            [sys.executable, "-m", "recsys_retrain.airflow_local"], capture_output=True, text=True,
            env={**os.environ, **env}, timeout=300,
        )
        if done.returncode != 0:
            raise PipelineError(f"creating the Airflow pools failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return {name: tuple(pool) for name, pool in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    pools = dag_pools(settings)
    payload = {name: {"slots": slots, "description": text, "include_deferred": False}
               for name, (slots, text) in pools.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pools.json"
        path.write_text(json.dumps(payload))
        airflow = Path(sys.executable).with_name("airflow")
        done = subprocess.run(  # nosec B603  # fixed argument list
            [str(airflow), "pools", "import", str(path)], capture_output=True, text=True, timeout=300,
        )
    if done.returncode != 0:
        raise PipelineError(f"airflow pools import failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return pools


if __name__ == "__main__":  # python -m recsys_retrain.airflow_local: the pools, into the configured Airflow database
    print(json.dumps(create_pools()))
