"""One DAG run through Airflow's own command line, as an operator would start it: ``airflow dags test``.

``champion_monitor`` (newest week -> pull -> validate -> monitor) runs on a
MovieLens-100K slice in a fresh Airflow home with this project's dags folder, a
private pipeline home and feature repository. (The training DAGs run under
``dag.test()`` in test_dag_files.py and through ``retrain demo``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from tests.conftest import copy_feature_repo

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.mark.slow
def test_champion_monitor_runs_under_the_airflow_cli(tmp_path, movielens):
    inter = movielens.interactions
    repo = copy_feature_repo(tmp_path / "features")
    bootstrap_feature_repo(RawData(inter[inter["timestamp"] < pd.Timestamp("1997-10-20", tz="UTC")], movielens.users,
                                   movielens.items), repo)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RETRAIN_HOME": str(tmp_path / "home"),
        "RETRAIN_FEATURE_REPO": str(repo),
    }
    migrated = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    done = subprocess.run(
        [str(AIRFLOW), "dags", "test", "champion_monitor", "-c", json.dumps({"window_end": "1997-10-20"})],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "home" / "runs" / "19971013-19971020"
    decision = json.loads((run_dir / "monitor.json").read_text())
    assert decision["window"] == "1997-10-13T00:00:00+00:00/1997-10-20T00:00:00+00:00"
    assert not decision["revert"] and "no champion and previous pair" in decision["reason"]
    assert (run_dir / "profile.json").exists()  # validate ran before the monitor
