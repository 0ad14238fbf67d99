"""DAG files in the spirit of Airflow's own test_example_dags: they parse fast and cleanly.

Each file is imported in a fresh interpreter so that the heavy-import check sees
only what the DAG file itself pulls in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = sorted((Path(__file__).resolve().parents[2] / "dags").glob("*.py"))
HEAVY = ("torch", "torchrec", "feast", "mlflow", "evidently", "pandas")

PROBE = """
import importlib.util, json, sys, time
import airflow.sdk, pendulum  # Airflow's own import cost is not the DAG file's
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


def test_retrain_dag_runs_the_cycle_in_order():
    dags = parse(DAGS[[p.name for p in DAGS].index("retrain.py")])["dags"]
    assert dags["retrain"] == {
        "pull": ["validate"],
        "validate": ["drift", "evaluate", "gate", "train"],
        "drift": ["gate", "train"],
        "train": ["evaluate", "gate"],
        "evaluate": ["gate"],
        "gate": [],
    }
