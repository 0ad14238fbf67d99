"""Shared set-up of the fault-injection suite: a small real world, and how each scenario reports.

Every scenario records what it measured as JUnit properties (``data_lost_rows``,
``bad_promotions``) before asserting that both are 0, so ``bench/faults.py`` can
count them from the report of a ``pytest tests/faults --junitxml`` run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.settings import Settings
from tests.conftest import copy_feature_repo

# MovieLens-100K before SLICE_END (about 11,800 ratings) and the week before it as the window.
SLICE_END = "1997-10-13"
WINDOW = ("1997-10-06", "1997-10-13")
TINY_TRAIN = {"epochs": 2, "embedding_dim": 8, "batch_size": 256}


def tiny_settings(home: Path, repo: Path, **sections) -> Settings:
    """Few epochs, a small model, the static schedule: fast, deterministic runs."""
    base = {"train": TINY_TRAIN, "schedule": {"policy": "static"}, "drift": {"permutations": 50}}
    return Settings(home=home, feature_repo=repo, **{**base, **sections})


def write_slice(raw: RawData, repo: Path, end: str = SLICE_END) -> RawData:
    """Bootstraps ``repo`` (a fresh copy of features/) with the interactions before ``end``."""
    inter = raw.interactions[raw.interactions["timestamp"] < pd.Timestamp(end, tz="UTC")]
    part = RawData(inter.reset_index(drop=True), raw.users, raw.items)
    bootstrap_feature_repo(part, copy_feature_repo(repo))
    return part


@pytest.fixture(scope="session")
def pulled_template(movielens, tmp_path_factory) -> dict:
    """One validated cycle folder (history, window, catalogue) of the slice, made once for the suite."""
    from recsys_retrain import cycle

    root = tmp_path_factory.mktemp("fault-world")
    write_slice(movielens, root / "features")
    s = tiny_settings(root / "home", root / "features")
    return cycle.validate(cycle.pull(*WINDOW, s), s)


def copy_cycle(template: dict, dest: Path) -> dict:
    """A private copy of the template cycle folder; returns the pulled dict pointing at it."""
    shutil.copytree(template["run_dir"], dest, ignore=shutil.ignore_patterns("model"))
    return {**template, "run_dir": str(dest), "profile": str(dest / "profile.json")}


def report(record_property, *, data_lost_rows: int, bad_promotions: int) -> None:
    """Records the scenario's measured outcome, then asserts it: nothing lost, no bad promotion."""
    record_property("data_lost_rows", int(data_lost_rows))
    record_property("bad_promotions", int(bad_promotions))
    assert data_lost_rows == 0, f"{data_lost_rows} rows lost"
    assert bad_promotions == 0, f"{bad_promotions} bad promotions"


def aliases(settings: Settings) -> dict[str, int]:
    """The registered model's aliases as {alias: version}; {} before anything is registered."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    try:
        return {k: int(v) for k, v in client.get_registered_model(settings.model_name).aliases.items()}
    except MlflowException:
        return {}


def versions(settings: Settings) -> list[int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{settings.model_name}'"))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def train_task(pulled: dict, settings: Settings, **popen):
    """Starts the train task in its own process (``tests.faults._runner``); returns the Popen."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **popen.pop("env", {})}
    cmd = [sys.executable, "-m", "tests.faults._runner", json.dumps(pulled), settings.model_dump_json()]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(proc, timeout: float = 600) -> tuple[int, dict | None, str]:
    """Waits for a train task; returns (exit code, its result dict or None, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return proc.returncode, result, err


def wait_for(path: Path, proc, timeout: float = 300) -> None:
    """Polls until ``path`` exists (the trainer's epoch checkpoint); fails if the task ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the task ended (code {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f}s"
        time.sleep(0.01)
