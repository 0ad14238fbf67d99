"""infra/k8s/train-pod.yaml: the command the GPU pod runs is the trainer's real entry point.

The pod cannot be scheduled here (no cluster, no GPU), so the test takes the
container's command and arguments from the template, points ``/cycles/RUN`` at a cycle
folder on this machine, swaps ``--nproc_per_node=gpu`` for one CPU process and runs it:
a renamed option or module in either the template or ``recsys_retrain.train.worker`` fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys_retrain.train import launch
from recsys_retrain.settings import Settings
from tests.train.test_launch import TINY, cycle_folder

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "k8s" / "train-pod.yaml"


def container() -> dict:
    pod = yaml.safe_load(TEMPLATE.read_text())
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]  # the one KubernetesPodOperator fills
    return base


def test_the_pod_runs_as_an_unprivileged_user_and_holds_no_secret():
    pod = yaml.safe_load(TEMPLATE.read_text())
    base = container()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert base["securityContext"]["allowPrivilegeEscalation"] is False
    assert all("value" not in e or "PASSWORD" not in e["name"] for e in base.get("env", []))
    assert [s["secretRef"]["name"] for s in base["envFrom"]] == ["recsys-retrain-env"]  # credentials from a Secret


@pytest.mark.slow
def test_the_pod_command_trains_a_model_from_a_cycle_folder(tmp_path):
    base = container()
    run = Path(cycle_folder(tmp_path / "cycles" / "RUN")["run_dir"])
    launch.write_train_settings(Settings(home=tmp_path / "home", train=TINY), run / "model")
    command = [part.replace("--nproc_per_node=gpu", "--nproc_per_node=1") for part in base["command"]]
    args = [a.replace("/cycles", str(tmp_path / "cycles")) for a in base["args"]]
    assert command[:2] == ["python", "-m"] and "--nproc_per_node=1" in command
    done = subprocess.run([sys.executable, *command[1:], *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run / "model" / "train_result.json").read_text())
    assert Path(result["checkpoint"]) == run / "model" / "model.pt" and (run / "model" / "model.pt").exists()
    assert len(result["epoch_losses"]) == TINY["epochs"] and result["epoch_losses"][-1] < result["epoch_losses"][0]
