"""Static checks a reviewer would run: Airflow 3 rules on the DAGs, pyflakes on all code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = [sys.executable, "-m", "ruff", "check", "--no-cache"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dags_follow_airflow_3_rules():
    done = ruff("dags", "--select", "AIR3")
    assert done.returncode == 0, done.stdout


def test_no_undefined_names_or_unused_imports():
    done = ruff("recsys_retrain", "dags", "tests", "bench", "features", "--select", "E9,F")
    assert done.returncode == 0, done.stdout
