"""The MLflow client every registry call goes through: configured per call, retried on outages.

This is a thin adapter around ``MlflowClient`` so that each Airflow task (a fresh
process) can call one function with the settings. Every MLflow call is retried
with exponential backoff on transient errors (server unreachable, database
locked) and then fails with a ``RegistryError`` that names the store; permanent
errors (a missing version, a bad request) propagate at once. Nothing touches
MLflow at import time: :func:`connect` runs :func:`configure` at the start of
every public call of the registry modules.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_retrain.errors import RegistryError
from recsys_retrain.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# MLflow error codes that a retry cannot fix; anything else (connection refused,
# INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, "database is locked") is retried.
PERMANENT_CODES = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "NOT_FOUND",
})


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences MLflow's INFO lines (table creation) and the pickle warning we chose to accept."""
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    drop_pickle_warning = _DropMessage("CloudPickle")  # both flavours name it in their pickle warning
    flavour_loggers = [logging.getLogger("mlflow.pytorch"), logging.getLogger("mlflow.pyfunc")]
    mlflow_logger.setLevel(max(level, logging.WARNING))
    progress = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the bar of each artifact download, on stderr
    for logger in flavour_loggers:
        logger.addFilter(drop_pickle_warning)
    try:
        yield
    finally:
        for logger in flavour_loggers:
            logger.removeFilter(drop_pickle_warning)
        mlflow_logger.setLevel(level)
        if progress is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = progress


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def configure(settings: Settings) -> str:
    """Points MLflow at the settings' store and returns the experiment id.

    Called at the start of every public function, so each Airflow task (a new
    process) sets itself up; calling it again is cheap and changes nothing. The
    experiment is named after the model and, with a SQLite store, keeps its
    artifacts under ``settings.artifact_root`` rather than MLflow's ``./mlruns``.
    Only the tracking URI is set process-wide (``mlflow.start_run`` needs it); the
    registry URI is left alone so that other clients in the process keep theirs.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = settings.mlflow_uri
    local = uri.startswith("sqlite:///")
    if local:
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)  # the fluent run API needs it; registry calls pass the URI explicitly
    location = settings.artifact_root.as_uri() if local else None
    with quiet():  # the first connection creates the tables and logs each step
        client = RetryingClient(mlflow.MlflowClient(tracking_uri=uri), settings)
        experiment = client.get_experiment_by_name(settings.model_name)
        if experiment is None:
            try:
                return client.create_experiment(settings.model_name, artifact_location=location)
            except MlflowException:  # another process created it in between
                experiment = client.get_experiment_by_name(settings.model_name)
                if experiment is None:
                    raise
    if experiment.lifecycle_stage != "active":
        raise RegistryError(
            f"MLflow experiment {settings.model_name!r} is deleted in {uri}; restore it or use another home"
        )
    if location and experiment.artifact_location != location:
        logger.warning(
            "experiment %s keeps artifacts in %s, not %s", settings.model_name, experiment.artifact_location, location
        )
    return experiment.experiment_id


def _transient(exc: BaseException) -> bool:
    """Whether retrying could help: connection and database-lock errors, not bad requests."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT_CODES
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in {"requests", "urllib3", "sqlalchemy", "sqlite3", "psycopg2"}


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for logs and one-line errors."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def retry(settings: Settings, what: str, fn: Callable[[], Any]) -> Any:
    """Calls ``fn``; on a transient error waits (doubling, with jitter) and tries again.

    After ``settings.gate.registry_retries`` attempts it raises one ``RegistryError``
    that names the store and the last error. Permanent errors propagate at once.
    """
    g = settings.gate
    delay = g.registry_backoff_s
    for attempt in range(1, g.registry_retries + 1):
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            if not _transient(exc):
                raise
            if attempt == g.registry_retries:
                raise RegistryError(
                    f"MLflow at {settings.mlflow_uri} failed on {what} after {attempt} attempts: {one_line(exc)}"
                ) from exc
            logger.warning("MLflow %s failed (attempt %d/%d), retrying in %.2fs: %s",
                           what, attempt, g.registry_retries, delay, one_line(exc))
            time.sleep(delay * (1.0 + 0.25 * random.random()))  # nosec B311  # retry jitter, not cryptography
            delay *= 2
    raise AssertionError("unreachable")


class RetryingClient:
    """An ``MlflowClient`` whose every method call goes through :func:`retry`."""

    def __init__(self, client: MlflowClient, settings: Settings) -> None:
        self._client, self._settings = client, settings

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry(self._settings, name, lambda: attr(*args, **kwargs))

        return call


def connect(settings: Settings) -> MlflowClient:
    """A retrying client for the settings' tracking and registry store, after :func:`configure`."""
    from mlflow import MlflowClient

    configure(settings)
    return RetryingClient(MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri), settings)


def model_version(client: MlflowClient, name: str, version: int | str) -> Any:
    """The ModelVersion, or a RegistryError that names what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        with quiet():
            return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"model {name!r} has no version {version}") from exc
        raise RegistryError(f"cannot read version {version} of model {name!r}: {exc.message}") from exc
