"""The retrain body, one reusable task group: pull -> validate -> drift -> calibrate -> train -> evaluate -> gate
-> promote_or_keep -> refit -> promote -> publish | keep -> decided -> record.

Each task calls one function of ``recsys_retrain.cycle`` with the run's overrides (from
its Params) and passes small dicts (URIs, counts, decisions): ``recsys_retrain.storage.step``
gives the step local files and turns the paths it returns into URIs under the storage root
(``storage.uri``), so the next task may run on another worker. ``retrain`` runs it on
the data interval; ``drift_watch`` runs it on the newest window with a short-circuit
after ``drift`` that stops below the trigger level. The gate's decision is a branch:
on the promote path ``refit`` refits the gated challenger through the window's end
(``train.refit``; a sanity check, the gated one serving when it fails), ``promote``
moves the aliases to what ``refit`` returned and ``publish`` writes the new champion's
top-K of recently active users to the online store; ``keep`` leaves the champion, and
``decided`` joins the two paths and returns the cycle's summary. ``record`` ends every run, whichever
branch ran (a stop below the trigger included): it logs the run's monitoring run in MLflow
and emits its alerts (``recsys_retrain.monitoring``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, TriggerRule, get_current_context, task, task_group

from recsys_common.assets import INTERACTIONS

GROUP = "cycle"  # the task group's id: a branch names its paths as "<group>.<task>"
EARLIER_SCORES = ("runs/*/per_user_metrics.json",)  # what the gate pools from earlier windows (gate.pool_windows)
IO_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}
# A task's dict is one XCom. TaskFlow infers ``multiple_outputs`` from a ``-> dict`` annotation and then also
# pushes every key as its own XCom: an API call and a database write each, about 0.15 s a task (a minute of
# the demo's replay). No task here reads another's keys one by one.
ONE_XCOM = {"multiple_outputs": False}

# Where tasks run. Under CeleryExecutor each queue has its own workers (``airflow celery worker
# --queues train`` on the training hosts); LocalExecutor ignores queues. The pool holds one slot,
# so one training runs at a time whichever DAG starts it (retrain_scheduled and drift_watch may
# reach the same week together); infra and ``recsys_retrain.airflow_local`` create it from POOLS.
DEFAULT_QUEUE = "default"
TRAIN_QUEUE = "train"
TRAIN_POOL = "recsys_train"
POOLS = {TRAIN_POOL: (1, "one training at a time (the train task of every cycle)")}
# Per try; a task past it is failed (and retried where it retries). Training gets hours: at
# production scale an adaptive run with a rate probe takes a few; everything else takes minutes.
TASK_TIMEOUT = timedelta(hours=1)
TRAIN_TIMEOUT = timedelta(hours=6)
# A failed or killed training retries on the same cycle folder and resumes after its last epoch
# checkpoint (recsys_retrain.train.checkpoints), with the same processes count.
TRAIN_ARGS = {
    "queue": TRAIN_QUEUE, "pool": TRAIN_POOL, "execution_timeout": TRAIN_TIMEOUT,
    "retries": 2, "retry_delay": timedelta(seconds=30),
}


def task_failed(context: dict[str, Any]) -> None:
    """Every task's ``on_failure_callback``: one structured event per failure (``recsys_retrain.alerts``)."""
    from recsys_retrain.alerts import task_failed as record

    record(context)


def task_retried(context: dict[str, Any]) -> None:
    """Every task's ``on_retry_callback``: the failed try that Airflow retries, recorded beside the failures."""
    from recsys_retrain.alerts import task_retried as record

    record(context)


DEFAULT_ARGS = {
    "on_failure_callback": task_failed,
    "on_retry_callback": task_retried,
    "execution_timeout": TASK_TIMEOUT,
    "queue": DEFAULT_QUEUE,
}

# Per-run overrides of the settings (None: keep the configured value). Param name -> (section, field).
OVERRIDES = {
    "epochs": ("train", "epochs"),
    "gate_min_delta": ("gate", "min_delta"),
    "gate_tolerance": ("gate", "tolerance"),
    "gate_policy": ("gate", "policy"),
    "drift_alpha": ("drift", "alpha"),
    "schedule_policy": ("schedule", "policy"),
    "refit": ("train", "refit"),
}
CYCLE_PARAMS = {
    "epochs": Param(None, type=["null", "integer"], minimum=1, description="Training epochs budget (train.epochs)."),
    "gate_min_delta": Param(
        None, type=["null", "number"], description="Mean NDCG@K gain the challenger needs (gate.min_delta)."
    ),
    "gate_tolerance": Param(
        None, type=["null", "number"], minimum=0, description="Non-inferiority margin of the gate (gate.tolerance)."
    ),
    "gate_policy": Param(
        None, type=["null", "string"], enum=[None, "non_inferiority", "superiority", "fresher_unless_worse"],
        description="Decision rule of the gate (gate.policy).",
    ),
    "drift_alpha": Param(
        None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1,
        description="Family-wise false-alarm rate of the drift check (drift.alpha).",
    ),
    "schedule_policy": Param(
        None, type=["null", "string"], enum=[None, "adaptive", "static"],
        description="Training schedule: 'adaptive' (calibrated, steered) or 'static' (schedule.policy).",
    ),
    "refit": Param(
        None, type=["null", "string"], enum=[None, "warm", "scratch", "off"],
        description="What serves after a promotion: the gated challenger refit through the window's end, warm or "
        "from scratch, or 'off': the gated challenger itself (train.refit).",
    ),
}
TRIGGER_PARAMS = {
    "retrain_on": Param(
        "minor", enum=["minor", "major"], description="Lowest drift severity that triggers the retrain."
    ),
}
WINDOW_PARAMS = {
    "window_start": Param(None, type=["null", "string"], description="Window start (ISO date); default the data interval."),
    "window_end": Param(None, type=["null", "string"], description="Window end, exclusive (ISO date); default the data interval."),
}


def overrides(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's Params as ``recsys_retrain.cycle`` overrides: ``{"train": {"epochs": 4}, ...}``, unset ones left out."""
    out: dict[str, dict[str, Any]] = {}
    for name, (section, field) in OVERRIDES.items():
        if params.get(name) is not None:
            out.setdefault(section, {})[field] = params[name]
    return out


def window_from(context: dict[str, Any]) -> tuple[str, str]:
    """``window_start``/``window_end`` Params when both are given, else the run's data interval."""
    params = context["params"]
    if params.get("window_start") and params.get("window_end"):
        return params["window_start"], params["window_end"]
    start, end = context["data_interval_start"], context["data_interval_end"]
    if start is None or end is None:
        raise ValueError("this run has no data interval: give the window_start and window_end Params")
    return start.isoformat(), end.isoformat()


def _overrides() -> dict[str, dict[str, Any]]:
    return overrides(get_current_context()["params"])


@task(**ONE_XCOM)
def newest_window() -> dict:
    """The window to check: the ``window_end`` Param, else the triggering asset event's, else the newest stored week."""
    from recsys_retrain import cycle

    ctx = get_current_context()
    events = (ctx.get("triggering_asset_events") or {}).get(INTERACTIONS, [])
    from_events = [e.extra["window_end"] for e in events if (e.extra or {}).get("window_end")]
    end = ctx["params"].get("window_end") or (max(from_events) if from_events else None)
    return cycle.window(end, overrides=_overrides())


@task(**ONE_XCOM, **IO_RETRIES)
def pull(window: dict | None = None) -> dict:
    from recsys_retrain import cycle, storage

    start, end = (window["start"], window["end"]) if window else window_from(get_current_context())
    return storage.step(cycle.pull, start, end, folder=storage.cycle_uri(start, end), overrides=_overrides())


@task(**ONE_XCOM)
def validate(pulled: dict) -> dict:
    from recsys_retrain import cycle, storage

    return storage.step(cycle.validate, pulled, overrides=_overrides())


@task(**ONE_XCOM)
def drift(pulled: dict) -> dict:
    from recsys_retrain import cycle, storage

    return storage.step(cycle.drift, pulled, overrides=_overrides())


@task.short_circuit(ignore_downstream_trigger_rules=False)  # the record task after the join still runs
def should_retrain(pulled: dict, drift_result: dict) -> bool:
    """True when the drift severity reaches the ``retrain_on`` Param; the verdict goes to trigger.json either way."""
    from recsys_retrain import cycle, storage

    verdict = storage.step(cycle.should_retrain, pulled, drift_result, get_current_context()["params"].get("retrain_on"))
    print(verdict["reason"])
    return verdict["retrain"]


@task(**ONE_XCOM)
def calibrate(pulled: dict, drift_result: dict) -> dict:
    """The SchedulePlan of this cycle (``plan.json`` in the cycle folder); None under ``schedule_policy=static``.

    ``champion`` names the version a warm-start plan continues from (None: from scratch).
    """
    from recsys_retrain import cycle, storage

    plan = storage.step(cycle.calibrate, pulled, drift_result, overrides=_overrides())
    return {"policy": plan["policy"], "plan": plan["plan"], "path": plan["path"], "champion": plan.get("champion")}


@task(**ONE_XCOM, **TRAIN_ARGS)
def train(pulled: dict, plan: dict) -> dict:
    """On the ``train`` queue and pool; a retry resumes from the epoch checkpoints in the cycle folder."""
    from recsys_retrain import cycle, storage

    return storage.step(cycle.train, pulled, overrides=_overrides(), plan=plan)


@task(**ONE_XCOM)
def evaluate(pulled: dict, trained: dict) -> dict:
    from recsys_retrain import cycle, storage

    return storage.step(cycle.evaluate, pulled, trained, overrides=_overrides())


@task(**ONE_XCOM, **IO_RETRIES)
def gate(pulled: dict, drift_result: dict, trained: dict, evaluated: dict) -> dict:
    """Registers the challenger and decides (``gate.policy``); the XCom is the decision with its MDE. Nothing moves yet."""
    from recsys_retrain import cycle, storage

    return storage.step(cycle.judge, pulled, drift_result, trained, evaluated, reads=EARLIER_SCORES, overrides=_overrides())


@task.branch
def promote_or_keep(judged: dict) -> str:
    """The promote path (its first task, ``refit``) for a promoting decision, else the keep path."""
    print(judged["reason"])
    return f"{GROUP}.refit" if judged["promote"] else f"{GROUP}.keep"


@task(**ONE_XCOM, **IO_RETRIES)
def refit(pulled: dict, trained: dict, judged: dict) -> dict:
    """Refits the gated challenger through the window's end and registers it; the XCom names the version to serve."""
    from recsys_retrain import cycle, storage

    result = storage.step(cycle.refit, pulled, trained, judged, overrides=_overrides())
    print(result["reason"])
    return result


@task(**ONE_XCOM, **IO_RETRIES)
def promote(judged: dict, refitted: dict) -> dict:
    from recsys_retrain import cycle, storage

    return storage.step(cycle.promote, judged, refitted, overrides=_overrides())


@task(**ONE_XCOM, **IO_RETRIES)
def publish(promoted: dict | None = None) -> dict:
    """Writes the champion's top-K of every recently active user to the online store (one key lookup per user)."""
    from recsys_retrain import cycle

    result = cycle.publish(overrides=_overrides())
    print(result["reason"])
    return result


@task(**ONE_XCOM)
def keep(judged: dict) -> dict:
    from recsys_retrain import cycle, storage

    return storage.step(cycle.keep, judged)


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, **ONE_XCOM)
def decided(judged: dict) -> dict:
    """Joins the two paths: the cycle's summary, whichever ran."""
    from recsys_retrain import cycle, storage

    return storage.step(cycle.decided, judged)


@task(trigger_rule=TriggerRule.NONE_FAILED, **ONE_XCOM, **IO_RETRIES)
def record(pulled: dict, summary_task: str | None = None) -> dict:
    """Logs this DAG run's monitoring run in MLflow and emits its alerts, whichever branch ran (skipped ones included).

    ``summary_task`` names the task whose XCom is the gate's outcome (None when skipped).
    """
    from recsys_retrain import cycle, storage

    ti = get_current_context()["ti"]
    summary = ti.xcom_pull(task_ids=summary_task) if summary_task else None
    result = storage.step(cycle.record, pulled, ti.dag_id, ti.run_id, summary, overrides=_overrides())
    print(f"monitoring run {result['mlflow_run_id']} ({result.get('kind')}), alerts: {result['alerts'] or 'none'}")
    return result


@task_group(group_id=GROUP)
def retrain_cycle(window: Any = None, drift_triggered: bool = False, train_step: Any = None) -> None:
    """pull -> validate -> drift -> calibrate -> train -> evaluate -> gate -> refit -> promote -> publish | keep -> decided -> record.

    Args:
        window: an XComArg of ``{"start", "end"}`` (``newest_window``); None reads the
            window from the run (``window_start``/``window_end`` Params, else the data interval).
        drift_triggered: put a ``should_retrain`` short-circuit between drift and train
            that skips the rest when the severity is below the ``retrain_on`` Param.
        train_step: what trains, called as ``train_step(validated, plan)``; None: the ``train``
            task (this worker, or torchrun from it). ``infra/airflow/gpu_train.gpu_train``
            trains in a Kubernetes GPU pod instead.
    """
    validated = validate(pull(window))
    drifted = drift(validated)
    plan = calibrate(validated, drifted)
    trained = (train_step or train)(validated, plan)
    evaluated = evaluate(validated, trained)
    judged = gate(validated, drifted, trained, evaluated)
    refitted = refit(validated, trained, judged)
    kept = keep(judged)
    branch = promote_or_keep(judged)
    branch >> [refitted, kept]
    promoted = promote(judged, refitted)
    published = publish(promoted)
    joined = decided(judged)
    [published, kept] >> joined >> record(validated, f"{GROUP}.decided")
    if drift_triggered:
        # Every task up to the join is a direct downstream of the short-circuit, so a stop skips them in one
        # scheduling pass; otherwise the skip reaches one layer per pass (and ``dag.test`` sleeps 1 s per layer).
        should_retrain(validated, drifted) >> [plan, trained, evaluated, judged, branch, refitted, kept, promoted, published, joined]
