"""The package installs as a wheel and works outside the source tree.

The wheel carries the DAGs and the Feast definitions (``recsys_retrain.dags``,
``recsys_retrain.feature_repo``); a fresh virtual environment that sees the installed
stack but not this checkout runs ``retrain --help``, parses every shipped DAG and seeds
a Feast repository from the shipped definitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARSE_SHIPPED = """
import json, os, sys, tempfile
from pathlib import Path
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp()
import recsys_retrain
from recsys_retrain.resources import dags_folder, seed_feature_repo
from recsys_retrain.settings import Settings
from recsys_retrain.airflow_local import load_dag
folder = dags_folder(Settings())
repo = Path(tempfile.mkdtemp()) / "features"
seeded = seed_feature_repo(repo)
dags = sorted(load_dag(p.stem).dag_id for p in folder.glob("*.py"))
print(json.dumps({"package": recsys_retrain.__file__, "dags_folder": str(folder), "dags": dags,
                  "seeded": seeded, "repo": sorted(p.name for p in repo.iterdir())}))
"""


def clean_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH, so a subprocess cannot reach the checkout through it."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def declared() -> tuple[list[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config.get("package-dir", {})


def test_the_declared_packages_are_the_packages_in_the_tree():
    packages, mapped = declared()
    in_tree = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "recsys_retrain").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    shipped = {name for name in packages if name in mapped or any(name.startswith(m + ".") for m in mapped)}
    assert set(packages) - shipped == in_tree, "add new subpackages to [tool.setuptools] packages in pyproject.toml"
    assert mapped == {"recsys_retrain.dags": "dags", "recsys_retrain.feature_repo": "features"}


def test_every_runtime_dependency_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert {"torch", "apache-airflow", "feast", "mlflow", "evidently", "tensordict", "torchmetrics"} <= names
    extras = project["optional-dependencies"]
    assert any(d.startswith("fbgemm-gpu-cpu==") for d in extras["cpu"])
    assert any(d.startswith("fbgemm-gpu==") for d in extras["gpu"]) and any(d.startswith("torchrec==") for d in extras["gpu"])


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("recsys_retrain-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The installed stack (torch, Airflow, Feast, ...) comes from this environment by a plain path entry: its
    # .pth files, this checkout's editable install among them, are not processed there.
    Path(site, "stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    helped = subprocess.run([str(venv / "bin" / "retrain"), "--help"], cwd=elsewhere, capture_output=True, text=True,
                            timeout=120, env=clean_env())
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "demo" in helped.stdout and "backtest" in helped.stdout

    probe = subprocess.run([str(python), "-c", PARSE_SHIPPED], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                           env=clean_env())
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(venv), found["package"]  # the wheel, not this checkout
    assert Path(found["dags_folder"]).is_relative_to(venv)
    assert found["dags"] == sorted(["champion_monitor", "drift_watch", "ingest", "retrain_scheduled"])
    assert found["seeded"] and {"feature_store.yaml", "feature_store.prod.yaml", "feature_views.py"} <= set(found["repo"])
