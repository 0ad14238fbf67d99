"""The cycle's train step on a Kubernetes GPU node: prepare -> the pod (infra/k8s/train-pod.yaml) -> collect.

A deployment with the ``apache-airflow-providers-cncf-kubernetes`` package (not part of
this project's local install, whose pins it does not co-install with) passes
:func:`gpu_train` to the shared task group in place of the ``train`` task::

    retrain_cycle(train_step=gpu_train)  # in a DAG file of the deployment

Three tasks, in a group with the id ``train``:

1. ``prepare`` (default queue) calls ``recsys_retrain.cycle.prepare_train``: the train
   settings (``train_settings.json``), the plan and the data the pod reads (fit part,
   the scheduler's validation part, the blend holdout, a warm start's champion) are
   written into the cycle folder, and the worker's arguments naming them are its XCom;
2. ``pod`` (``train`` queue, ``recsys_train`` pool, retried) runs torchrun on every GPU of
   the pod with those arguments. The cycle folders' volume is mounted in the pod at the
   same path as on the Airflow workers (``RETRAIN_HOME``), so the paths need no
   translation (``storage.uri`` is a ``file://`` root on that volume: ``prepare`` reads the
   XComs' URIs as its paths, and refuses an object-store root); a retry resumes from the
   epoch checkpoints (one per rank: keep the GPU count the same between tries);
3. ``collect`` (default queue) calls ``recsys_retrain.cycle.collect_train`` on the pod's
   ``train_result.json``: the same dict the ``train`` task returns.

:func:`pod_manifest` is the pod that is submitted, a plain dict; tests/test_k8s_pod.py
checks it against the Kubernetes API models and runs its command on this machine.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

POD_TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "train-pod.yaml"
BASE = "base"  # the container KubernetesPodOperator fills in
CYCLES_VOLUME = "cycles"


def pod_manifest(args: list[str], home: str | Path, image: str | None = None, template: Path = POD_TEMPLATE) -> dict:
    """The training pod: the template with the worker's arguments, the cycle volume mounted at ``home``.

    Args:
        args: the worker's arguments (``cycle.prepare_train``'s ``args``): paths under ``home``.
        home: ``RETRAIN_HOME`` of the Airflow workers, where the pod mounts the same volume.
        image: the training image (default: the template's).
    """
    pod = yaml.safe_load(Path(template).read_text())
    manifest = copy.deepcopy(pod)
    (base,) = [c for c in manifest["spec"]["containers"] if c["name"] == BASE]
    base["args"] = [str(a) for a in args]
    if image:
        base["image"] = image
    for mount in base["volumeMounts"]:
        if mount["name"] == CYCLES_VOLUME:
            mount["mountPath"] = str(home)
    base["env"] = [e for e in base.get("env", []) if e["name"] != "RETRAIN_HOME"] + [
        {"name": "RETRAIN_HOME", "value": str(home)}]
    return manifest


def v1_pod(manifest: dict) -> Any:
    """The manifest as the Kubernetes client's ``V1Pod`` (KubernetesPodOperator's ``full_pod_spec``)."""
    from kubernetes.client import ApiClient

    return ApiClient().deserialize(json.dumps(manifest), "V1Pod", "application/json")


def gpu_train(pulled: Any, plan: Any, namespace: str = "recsys", image: str | None = None) -> Any:
    """The train step as a task group (id ``train``): prepare -> KubernetesPodOperator -> collect.

    Args:
        pulled: the validated cycle's XComArg (``run_dir``, ``start``).
        plan: the calibrate step's XComArg.
        namespace: Kubernetes namespace of the training pods.
        image: the training image (default: the template's).

    Returns:
        The ``collect`` task's XComArg: what the ``train`` task would have returned.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import get_current_context, task, task_group
    from recsys_common import ONE_XCOM, TRAIN_POOL, TRAIN_QUEUE, TRAIN_TIMEOUT, overrides

    home = os.environ.get("RETRAIN_HOME", "/cycles/home")

    @task(**ONE_XCOM)
    def prepare(pulled: dict, plan: dict) -> dict:
        from recsys_retrain import cycle, storage

        # the pod reads the cycle folder on its volume: the storage root is that volume (file://), given as paths
        return cycle.prepare_train(storage.mounted(pulled), overrides=overrides(get_current_context()["params"]),
                                   plan=storage.mounted(plan))

    @task(**ONE_XCOM)
    def collect(pulled: dict, plan: dict) -> dict:
        from recsys_retrain import cycle, storage

        return storage.step(cycle.collect_train, pulled, overrides=overrides(get_current_context()["params"]), plan=plan)

    @task_group(group_id="train")
    def on_kubernetes(pulled: Any, plan: Any) -> Any:
        prepared = prepare(pulled, plan)
        pod = KubernetesPodOperator(
            task_id="pod",
            namespace=namespace,
            full_pod_spec=v1_pod(pod_manifest([], home, image)),
            arguments=prepared["args"],  # templated: the worker arguments prepare returned
            get_logs=True,
            do_xcom_push=False,
            on_finish_action="delete_succeeded_pod",
            queue=TRAIN_QUEUE,
            pool=TRAIN_POOL,
            execution_timeout=TRAIN_TIMEOUT,
            retries=2,
        )
        collected = collect(pulled, plan)
        prepared >> pod >> collected
        return collected

    return on_kubernetes(pulled, plan)
