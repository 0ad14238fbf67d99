"""The Airflow task that trains on a Kubernetes GPU node: submits infra/k8s/train-pod.yaml.

Use it in place of the ``train`` task of ``dags/recsys_common/cycle_group.py`` on a
deployment with the ``apache-airflow-providers-cncf-kubernetes`` package (not part of
this project's local install): the pod runs ``torchrun --nproc_per_node=gpu -m
pipeline.train`` on the cycle folder that ``pull``/``validate`` wrote to the shared
volume, and the next task reads ``train_result.json`` from it, as ``pipeline.launch``
does on one machine. A retried task resumes from the epoch checkpoints in the same
folder (one per rank: keep the GPU count the same between tries).

Example (inside the task group, replacing ``trained = train(validated)``)::

    trained = gpu_train(validated)
"""

from __future__ import annotations

from pathlib import Path

POD_TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "train-pod.yaml"
CYCLES_MOUNT = "/cycles"


def gpu_train(validated, task_id: str = "train", namespace: str = "recsys"):
    """A KubernetesPodOperator on the pod template; its XCom is the TrainResult dict rank 0 wrote.

    Args:
        validated: the ``validate`` task's XComArg (a dict with ``run_dir`` under the shared volume).
        task_id: the task's id (``train`` keeps the cycle's wiring and tests).
        namespace: Kubernetes namespace of the training pods.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    run = "{{ ti.xcom_pull(task_ids='cycle.validate')['run_dir'] }}"
    return KubernetesPodOperator(
        task_id=task_id,
        namespace=namespace,
        pod_template_file=str(POD_TEMPLATE),
        arguments=["--history", f"{run}/history.parquet", "--catalogue", f"{run}/catalogue.parquet",
                   "--out", f"{run}/model", "--train-settings", f"{run}/model/train_settings.json"],
        get_logs=True,
        do_xcom_push=False,
        on_finish_action="delete_succeeded_pod",
        retries=2,
    )
