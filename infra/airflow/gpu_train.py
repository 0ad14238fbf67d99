"""The Airflow task that trains on a Kubernetes GPU node: submits infra/k8s/train-pod.yaml.

Use it in place of the ``train`` task of ``dags/recsys_common/cycle_group.py`` on a
deployment with the ``apache-airflow-providers-cncf-kubernetes`` package (not part of
this project's local install): the pod runs ``torchrun --nproc_per_node=gpu -m
recsys_retrain.train.worker`` on the cycle folder that ``pull``/``validate`` wrote to the shared
volume, and the next task reads ``train_result.json`` from it, as ``recsys_retrain.train.launch``
does on one machine. A retried task resumes from the epoch checkpoints in the same
folder (one per rank: keep the GPU count the same between tries).

Example (inside the task group, in place of the ``train`` task)::

    validated >> gpu_train()  # evaluate then reads <run_dir>/model/train_result.json
"""

from __future__ import annotations

from pathlib import Path

POD_TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "train-pod.yaml"
CYCLES_MOUNT = "/cycles"


def gpu_train(task_id: str = "train", namespace: str = "recsys"):
    """A KubernetesPodOperator on the pod template, training in the cycle folder ``validate`` returned.

    The train settings JSON must be in ``<run_dir>/model`` first (``recsys_retrain.train.launch.write_train_settings``);
    rank 0 writes ``train_result.json`` beside the model.

    Args:
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
