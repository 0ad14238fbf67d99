"""infra/k8s/train-pod.yaml and infra/airflow/gpu_train.py: the pod receives what it trains on, and is a valid Pod.

The pod cannot be scheduled here (no cluster, no GPU). ``cycle.prepare_train`` writes
the settings, plan and data files into a cycle folder on this machine, the manifest
``gpu_train`` submits is checked against the Kubernetes API models (the ``kubernetes``
client's ``V1Pod``: a field the API does not know, or of the wrong type, does not come
back), and its command runs with ``--nproc_per_node=gpu`` swapped for one CPU process:
a renamed option or module in the template, the prepare step or ``recsys_retrain.train.worker``
fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.airflow.gpu_train import pod_manifest, v1_pod
from recsys_retrain import cycle
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import Settings
from tests.train.test_launch import TINY, cycle_folder

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "k8s" / "train-pod.yaml"
STATIC = {"policy": "static"}
PATH_OPTIONS = ("--history", "--catalogue", "--out", "--train-settings", "--plan", "--validation", "--blend-holdout")


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


def prepared(tmp_path: Path, plan: dict | None = None) -> tuple[Settings, dict, dict]:
    """A cycle folder under RETRAIN_HOME, the prepare step run on it, and the pulled dict."""
    home = tmp_path / "home"
    settings = Settings(home=home, train=TINY, schedule=STATIC)
    pulled = cycle_folder(home / "runs" / "RUN")
    return settings, pulled, cycle.prepare_train(pulled, settings, plan=plan)


def options(args: list[str]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--")}


def test_the_manifest_is_a_pod_the_kubernetes_api_accepts(tmp_path):
    pytest.importorskip("kubernetes")
    from kubernetes.client import ApiClient

    settings, _, prep = prepared(tmp_path)
    manifest = pod_manifest(prep["args"], settings.home)
    pod = v1_pod(manifest)
    assert ApiClient().sanitize_for_serialization(pod) == manifest  # nothing unknown dropped, nothing retyped
    (base,) = pod.spec.containers
    assert base.args == prep["args"] and base.volume_mounts[0].mount_path == str(settings.home)
    assert {e.name: e.value for e in base.env}["RETRAIN_HOME"] == str(settings.home)
    assert base.resources.limits["nvidia.com/gpu"] == "4" and pod.spec.restart_policy == "Never"

    broken = pod_manifest(prep["args"], settings.home)
    broken["spec"]["containers"][0]["volumeMount"] = broken["spec"]["containers"][0].pop("volumeMounts")  # a typo
    assert ApiClient().sanitize_for_serialization(v1_pod(broken)) != broken


def test_the_pod_receives_the_settings_the_plan_and_its_data_as_paths_on_the_shared_volume(tmp_path):
    plan = SchedulePlan(dense_lr=0.01, sparse_lr=0.05, batch_size=32, max_epochs=2)
    settings, pulled, prep = prepared(tmp_path, {"policy": "adaptive", "plan": plan.to_dict(), "path": "plan.json"})
    run = Path(pulled["run_dir"])
    (run / "plan.json").write_text(json.dumps({"policy": "adaptive", "plan": plan.to_dict()}))
    given = options(prep["args"])
    assert set(given) == set(PATH_OPTIONS)  # adaptive: the plan and the scheduler's validation part too
    assert all(Path(given[o]).is_relative_to(settings.home) for o in PATH_OPTIONS)  # the pod mounts RETRAIN_HOME
    assert all(Path(given[o]).exists() for o in PATH_OPTIONS if o not in ("--out", "--plan"))
    assert json.loads(Path(given["--train-settings"]).read_text()) == settings.train.model_dump(mode="json")
    assert given["--plan"] == str(run / "plan.json")


@pytest.mark.slow
def test_the_pod_command_trains_a_model_that_collect_returns_as_the_train_task_does(tmp_path):
    settings, pulled, prep = prepared(tmp_path)
    base = [c for c in pod_manifest(prep["args"], settings.home)["spec"]["containers"] if c["name"] == "base"][0]
    command = [part.replace("--nproc_per_node=gpu", "--nproc_per_node=1") for part in base["command"]]
    assert command[:2] == ["python", "-m"] and "--nproc_per_node=1" in command
    done = subprocess.run([sys.executable, *command[1:], *base["args"]], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = cycle.collect_train(pulled, settings)
    run = Path(pulled["run_dir"])
    assert Path(result["checkpoint"]) == run / "model" / "model.pt" and (run / "model" / "model.pt").exists()
    assert len(result["epoch_losses"]) == TINY["epochs"] and result["epoch_losses"][-1] < result["epoch_losses"][0]
    assert result["data_start"] and json.loads((run / "trained.json").read_text())["result"] == result


WIRE = """
import json, sys, types
import pendulum
from airflow.sdk import BaseOperator, dag
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])

class KubernetesPodOperator(BaseOperator):  # stands in for the provider's (not installable here): same arguments
    template_fields = ("arguments",)
    def __init__(self, *, namespace, full_pod_spec, arguments, get_logs, do_xcom_push, on_finish_action, **kwargs):
        super().__init__(**kwargs)
        self.full_pod_spec, self.arguments = full_pod_spec, arguments

module = types.ModuleType("airflow.providers.cncf.kubernetes.operators.pod")
module.KubernetesPodOperator = KubernetesPodOperator
sys.modules[module.__name__] = module
from recsys_common import DEFAULT_ARGS, retrain_cycle
from infra.airflow.gpu_train import gpu_train

@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), default_args=DEFAULT_ARGS)
def on_gpus():
    retrain_cycle(train_step=gpu_train)

d = on_gpus()
pod = d.get_task("cycle.train.pod")
print(json.dumps({"tasks": {t.task_id: sorted(t.downstream_task_ids) for t in d.tasks},
                  "pod": {"queue": pod.queue, "pool": pod.pool, "retries": pod.retries,
                          "timeout": pod.execution_timeout.total_seconds(),
                          "image": pod.full_pod_spec.spec.containers[0].image}}))
"""


def test_gpu_train_takes_the_train_task_s_place_in_the_cycle():
    pytest.importorskip("kubernetes")
    done = subprocess.run([sys.executable, "-c", WIRE, str(ROOT / "dags"), str(ROOT)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    tasks = out["tasks"]
    assert "cycle.train" not in tasks
    assert tasks["cycle.calibrate"] == ["cycle.train.collect", "cycle.train.prepare"]  # both read the plan
    assert tasks["cycle.train.prepare"] == ["cycle.train.pod"] and tasks["cycle.train.pod"] == ["cycle.train.collect"]
    assert tasks["cycle.train.collect"] == ["cycle.evaluate", "cycle.gate", "cycle.refit"]  # where train's result went
    assert out["pod"] == {"queue": "train", "pool": "recsys_train", "retries": 2, "timeout": 6 * 3600,
                          "image": "registry.example.org/recsys-retrain:gpu"}
