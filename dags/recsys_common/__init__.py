"""What the DAG files share: the interactions asset, the Params, and the retrain body as one task group.

Only ``airflow.sdk`` and the standard library are imported here; every task
imports ``recsys_retrain`` inside its body. Airflow puts the dags folder on ``sys.path``,
so DAG files import this package as ``recsys_common``.
"""

from __future__ import annotations

from recsys_common.assets import INTERACTIONS
from recsys_common.cycle_group import (
    CYCLE_PARAMS,
    DEFAULT_ARGS,
    DEFAULT_QUEUE,
    IO_RETRIES,
    ONE_XCOM,
    POOLS,
    TASK_TIMEOUT,
    TRAIN_POOL,
    TRAIN_QUEUE,
    TRAIN_TIMEOUT,
    TRIGGER_PARAMS,
    WINDOW_PARAMS,
    newest_window,
    overrides,
    publish,
    pull,
    record,
    retrain_cycle,
    validate,
    window_from,
)

__all__ = [
    "CYCLE_PARAMS", "DEFAULT_ARGS", "DEFAULT_QUEUE", "INTERACTIONS", "IO_RETRIES", "ONE_XCOM", "POOLS", "TASK_TIMEOUT",
    "TRAIN_POOL", "TRAIN_QUEUE", "TRAIN_TIMEOUT", "TRIGGER_PARAMS", "WINDOW_PARAMS",
    "newest_window", "overrides", "publish", "pull", "record", "retrain_cycle", "validate", "window_from",
]
