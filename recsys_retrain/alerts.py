"""Failed tasks as structured events: one JSON line each, in ``<home>/alerts.jsonl``.

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


def task_failed(context: dict[str, Any], settings: Settings | None = None) -> None:
    """``on_failure_callback``: records the failed task's DAG, id, run and error line (and logs it)."""
    _task_event("task_failed", context, settings)


def task_retried(context: dict[str, Any], settings: Settings | None = None) -> None:
    """``on_retry_callback``: a failed try that Airflow retries (``task_retried``; :func:`failures` leaves it out)."""
    _task_event("task_retried", context, settings)


def _task_event(event: str, context: dict[str, Any], settings: Settings | None) -> None:
    ti = context["ti"]
    fields = {"event": event, "dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
              "try_number": getattr(ti, "try_number", None), "error": error_line(context.get("exception"))}
    log.error("%s: %s.%s (run %s, try %s): %s", event, fields["dag_id"], fields["task_id"], fields["run_id"],
              fields["try_number"], fields["error"])
    record(fields, settings or Settings())


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
