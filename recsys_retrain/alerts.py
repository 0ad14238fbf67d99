"""Events a team can route: one JSON line each in ``<home>/alerts.jsonl``, an MLflow tag, an optional webhook.

Five events are emitted (:func:`emit`): ``drift`` (a drift at or above the trigger
level), ``challenger_rejected``, ``revert``, ``task_failed`` and ``task_retried``. Each becomes one JSON
line (what a log shipper or an alert manager follows), an ``alert.<event>`` tag on the
DAG run's monitoring run in MLflow (``recsys_retrain.monitoring.runs``), and, when
``alerts.webhook_url`` is set (``RETRAIN_ALERTS__WEBHOOK_URL``), a JSON POST retried
with backoff. Delivery never fails the task that raised the event: a webhook that
stays down is logged as a warning and the JSON line stays the record.

Every DAG of the project passes :func:`task_failed` as its tasks' ``on_failure_callback``
(``recsys_common.DEFAULT_ARGS``), so a failure is recorded with the DAG, the task, the
run and the error's last line, whichever worker ran it. A log shipper or an alert
manager can follow the file; ``retrain demo`` reads it to say which task of a failed
run broke and why, instead of pointing at the logs. A try that Airflow retries (the
``train`` task resumes from its epoch checkpoints) is recorded as ``task_retried`` through
``on_retry_callback``, so a flaky task shows before it finally fails.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recsys_retrain.settings import Settings

log = logging.getLogger(__name__)

ALERTS_FILE = "alerts.jsonl"
EVENTS = ("drift", "challenger_rejected", "revert", "task_failed", "task_retried")


def error_line(exc: BaseException | None) -> str:
    """The line a traceback ends with: the error's type and the first line of its message.

    Example:
        >>> error_line(ValueError("cold segment is empty\\nmore detail"))
        'ValueError: cold segment is empty'
    """
    if exc is None:
        return "unknown error"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def record(event: dict[str, Any], settings: Settings) -> Path:
    """Appends ``event`` (with a UTC ``time``) as one JSON line; returns the file."""
    path = Path(settings.home) / ALERTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(), **event}, default=str)
    with path.open("a", encoding="utf-8") as out:  # one short append: whole lines, readers never see half of one
        out.write(line + "\n")
    return path


def emit(event: dict[str, Any], settings: Settings, mlflow_run_id: str | None = None) -> dict[str, Any]:
    """One structured event: a JSON line, an ``alert.<event>`` tag on ``mlflow_run_id``, and the webhook if set.

    Returns the event as written (with its ``time``) and ``delivered``: whether the
    webhook took it (None without a webhook). The tag and the webhook are best effort.
    """
    if event.get("event") not in EVENTS:
        raise ValueError(f"unknown alert event {event.get('event')!r}; one of {', '.join(EVENTS)}")
    payload = {"time": datetime.now(timezone.utc).isoformat(), **event}
    if mlflow_run_id:
        payload["mlflow_run_id"] = mlflow_run_id
    record(payload, settings)
    if mlflow_run_id:
        try:
            from recsys_retrain.registry.client import connect

            connect(settings).set_tag(mlflow_run_id, f"alert.{event['event']}", json.dumps(payload, default=str)[:4000])
        except Exception as exc:  # the JSON line is the record; a registry outage must not fail the task
            log.warning("alert %s: MLflow tag not set: %s", event["event"], error_line(exc))
    delivered = post(payload, settings) if settings.alerts.webhook_url else None
    return {**payload, "delivered": delivered}


def post(payload: dict[str, Any], settings: Settings) -> bool:
    """POSTs ``payload`` as JSON to ``alerts.webhook_url``, retried with exponential backoff; False when it never took it."""
    import urllib.request

    from tenacity import retry, stop_after_attempt, wait_exponential

    a = settings.alerts
    body = json.dumps(payload, default=str).encode("utf-8")

    @retry(stop=stop_after_attempt(a.webhook_attempts), wait=wait_exponential(multiplier=a.webhook_backoff_s), reraise=True)
    def send() -> None:
        request = urllib.request.Request(a.webhook_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=a.webhook_timeout_s) as response:  # nosec B310  # the configured URL
            response.read()

    try:
        send()
        return True
    except Exception as exc:
        log.warning("alert %s: webhook %s failed after %d attempts: %s", payload.get("event"), a.webhook_url,
                    a.webhook_attempts, error_line(exc))
        return False


def task_failed(context: dict[str, Any], settings: Settings | None = None) -> None:
    """``on_failure_callback``: emits the failed task's DAG, id, run and error line (tagged on its monitoring run, if any)."""
    _task_event("task_failed", context, settings)


def task_retried(context: dict[str, Any], settings: Settings | None = None) -> None:
    """``on_retry_callback``: a failed try that Airflow retries (``task_retried``; :func:`failures` leaves it out)."""
    _task_event("task_retried", context, settings)


def _task_event(event: str, context: dict[str, Any], settings: Settings | None) -> None:
    ti = context["ti"]
    s = settings or Settings()
    fields = {"event": event, "dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
              "try_number": getattr(ti, "try_number", None), "error": error_line(context.get("exception"))}
    log.error("%s: %s.%s (run %s, try %s): %s", event, fields["dag_id"], fields["task_id"], fields["run_id"],
              fields["try_number"], fields["error"])
    mlflow_run_id = None
    try:  # a retry is not a failed run yet: only a failure looks up (or opens) the run's FAILED monitoring run
        if s.monitoring.enabled and event == "task_failed":
            from recsys_retrain.monitoring.runs import run_of

            mlflow_run_id = run_of(s, ti.dag_id, ti.run_id)
    except Exception as exc:  # the callback must not raise: the event is recorded without the tag
        log.warning("%s: no monitoring run looked up: %s", event, error_line(exc))
    emit(fields, s, mlflow_run_id)


def failures(settings: Settings, dag_id: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
    """The recorded task failures, oldest first, of one DAG and run when given."""
    path = Path(settings.home) / ALERTS_FILE
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        e for e in events
        if e.get("event") == "task_failed" and dag_id in (None, e.get("dag_id")) and run_id in (None, e.get("run_id"))
    ]
