"""MLflow tracking and registry: log a challenger, gate it, move the aliases.

Three aliases on ``settings.model_name`` carry the state of the pipeline:
``challenger`` (the latest candidate), ``champion`` (the version that serves) and
``previous`` (the champion before it, the target of a rollback). Stages are
deprecated in MLflow 3, so nothing here uses them.

The gate lives in :mod:`recsys_retrain.gate` (pure functions of per-user metrics);
:func:`decide` here is the skeleton's scalar rule, kept for callers that have only
two means. The rest of the module is a thin adapter around ``MlflowClient`` so
that each Airflow task (a fresh process) can call one function with the settings.

MLflow keeps no history of aliases and has no compare-and-set on them, so this
module adds both, with nothing but the registry itself:

* every alias move is appended to the registered model's tags
  (``alias_history.000042`` = JSON: alias, from, to, when, who/what, why);
* moves happen under a lock, which is a registered model named
  ``<model>.alias-lock``: creating a registered model is atomic in every MLflow
  backend (a unique name), so exactly one process holds it; it carries an owner
  token and a lease so a crashed holder's lock can be broken;
* a multi-alias move is written first as an intent (``alias_op.pending``), then
  applied, then logged and cleared; the next move, under the lock, rolls a
  left-over intent forward, so an interrupted promotion never stays half-moved;
* every MLflow call is retried with exponential backoff on transient errors
  (server unreachable, database locked) and then fails with a ``RegistryError``.
Nothing touches MLflow at import time: :func:`configure` runs at the start of
every public call.

Models are stored in MLflow's pickle format (``serialization_format="pickle"``):
the default ``pt2`` format traces ``forward`` with a tensor input example, which a
TorchRec model taking KeyedJaggedTensors cannot provide. The pickle refers to
classes by module (``recsys_retrain.model.Recommender``), so the loading process must be
able to import ``recsys_retrain``, as every stage of this project can. No ``code_paths``
snapshot is logged: MLflow would prepend it to ``sys.path`` on every load and a
process that has not yet imported ``recsys_retrain`` would then run the snapshot instead
of the installed package.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from recsys_retrain.errors import RegistryError
from recsys_retrain.gate import Check, GateDecision, lenient_from_dict
from recsys_retrain.settings import GateSettings, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import nn

logger = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
WINDOW_TAG = "window"
MODEL_ARTIFACT = "model"
DECISION_ARTIFACT = "gate_decision.json"
HISTORY_PREFIX = "alias_history."
PENDING_TAG = "alias_op.pending"
LOCK_SUFFIX = ".alias-lock"
REVERTED_TAG = "reverted"
# MLflow error codes that a retry cannot fix; anything else (connection refused,
# INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, "database is locked") is retried.
PERMANENT_CODES = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "NOT_FOUND",
})

__all__ = ["Check", "GateDecision"]  # re-exported: recsys_retrain.registry.GateDecision keeps working


@dataclass(frozen=True)
class Candidate:
    """One registered model version and the window it was trained for."""

    run_id: str
    version: int
    model_uri: str
    window: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Candidate:
        return lenient_from_dict(cls, {**payload, "version": int(payload["version"])})


def decide(
    challenger_value: float,
    champion_value: float | None,
    settings: GateSettings,
    *,
    challenger_version: int | None = None,
    champion_version: int | None = None,
) -> GateDecision:
    """The promotion rule, free of I/O so that it is tested on numbers alone.

    The first model is promoted; afterwards the challenger must beat the champion by
    more than ``min_delta`` on the same holdout. A value that is NaN or infinite
    means the evaluation went wrong, so it never promotes.

    Example:
        >>> decide(0.12, 0.11, GateSettings(metric="ndcg_at_10", min_delta=0.0)).promote
        True
    """
    m, d = settings.metric, settings.min_delta
    challenger_value = float(challenger_value)
    champion_value = None if champion_value is None else float(champion_value)
    if not math.isfinite(challenger_value):
        promote, reason = False, f"challenger {m} is {challenger_value}; a non-finite value never promotes"
    elif champion_value is None:
        promote, reason = True, f"no champion yet: challenger {m} {challenger_value:.6g} becomes the first champion"
    elif not math.isfinite(champion_value):
        promote, reason = False, f"champion {m} is {champion_value}; cannot compare, champion kept"
    else:
        promote = challenger_value > champion_value + d
        op = ">" if promote else "<="
        reason = f"challenger {m} {challenger_value:.6g} {op} champion {champion_value:.6g} + min_delta {d:.6g}"
    return GateDecision(m, challenger_value, champion_value, d, promote, reason, challenger_version, champion_version)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences MLflow's INFO lines (table creation) and the pickle warning we chose to accept."""
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    drop_pickle_warning = _DropMessage("Pickle or CloudPickle")
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    mlflow_logger.setLevel(max(level, logging.WARNING))
    pytorch_logger.addFilter(drop_pickle_warning)
    try:
        yield
    finally:
        pytorch_logger.removeFilter(drop_pickle_warning)
        mlflow_logger.setLevel(level)


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
    with _quiet():  # the first connection creates the tables and logs each step
        client = _Retrying(mlflow.MlflowClient(tracking_uri=uri), settings)
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


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _retry(settings: Settings, what: str, fn: Callable[[], Any]) -> Any:
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
                    f"MLflow at {settings.mlflow_uri} failed on {what} after {attempt} attempts: {_one_line(exc)}"
                ) from exc
            logger.warning("MLflow %s failed (attempt %d/%d), retrying in %.2fs: %s",
                           what, attempt, g.registry_retries, delay, _one_line(exc))
            time.sleep(delay * (1.0 + 0.25 * random.random()))  # nosec B311  # retry jitter, not cryptography
            delay *= 2
    raise AssertionError("unreachable")


class _Retrying:
    """An ``MlflowClient`` whose every method call goes through :func:`_retry`."""

    def __init__(self, client: MlflowClient, settings: Settings) -> None:
        self._client, self._settings = client, settings

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return _retry(self._settings, name, lambda: attr(*args, **kwargs))

        return call


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    configure(settings)
    return _Retrying(MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri), settings)


def _aliases(client: MlflowClient, name: str, effective: bool = False) -> dict[str, int]:
    """Alias -> version; empty before the first registration (no registered model yet).

    With ``effective``, an interrupted alias move (a pending intent) is read as done,
    so readers never see a half-moved pair; the next move completes it for real.
    """
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
        aliases = {alias: int(v) for alias, v in rm.aliases.items()}
        if effective and PENDING_TAG in rm.tags:
            for m in json.loads(rm.tags[PENDING_TAG])["moves"]:
                if m["to_version"] is None:
                    aliases.pop(m["alias"], None)
                else:
                    aliases[m["alias"]] = int(m["to_version"])
        return aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise RegistryError(f"cannot read registered model {name!r}: {exc.message}") from exc


def _version(client: MlflowClient, name: str, version: int | str) -> Any:
    """The ModelVersion, or a RegistryError that names what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        with _quiet():
            return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"model {name!r} has no version {version}") from exc
        raise RegistryError(f"cannot read version {version} of model {name!r}: {exc.message}") from exc


def _candidate(client: MlflowClient, name: str, version: int) -> Candidate:
    mv = _version(client, name, version)
    return Candidate(mv.run_id or "", int(mv.version), f"models:/{name}/{mv.version}", mv.tags.get(WINDOW_TAG, ""))


def find_candidate(settings: Settings, window: str) -> Candidate | None:
    """The version already registered for ``window``, if any (the lowest one)."""
    client = _client(settings)
    name = settings.model_name
    if "'" in window:
        raise RegistryError(f"window {window!r} must not contain a quote")
    with _quiet():
        found = client.search_model_versions(f"name='{name}' and tag.{WINDOW_TAG}='{window}'")
    return _candidate(client, name, min(int(mv.version) for mv in found)) if found else None


def log_candidate(
    model: nn.Module,
    *,
    settings: Settings,
    window: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    artifacts: dict[str, Path] | None = None,
    tags: dict[str, Any] | None = None,
) -> Candidate:
    """Logs one training run, registers its model and points ``challenger`` at it.

    Idempotent per window: when a version tagged with ``window`` exists, it is
    returned untouched (no new run, no alias move), so an Airflow retry of the same
    window cannot register a duplicate. The window tag is written in the same call
    that creates the version, so a crash cannot leave an untagged version behind.

    Args:
        model: any CPU ``nn.Module`` whose classes the loading process can import.
        artifacts: file or folder to log under a name, e.g. ``{"drift.html": path}``.
        tags: set on the run and on the model version.
    """
    existing = find_candidate(settings, window)
    if existing is not None:
        return existing
    artifacts = artifacts or {}
    missing = [str(p) for p in artifacts.values() if not Path(p).exists()]
    if missing:
        raise RegistryError(f"artifacts to log do not exist: {', '.join(missing)}")
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    return _register(model, settings, window, params, metrics, artifacts, tags)


def _register(
    model: nn.Module,
    settings: Settings,
    window: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    artifacts: dict[str, Path],
    tags: dict[str, str],
) -> Candidate:
    import mlflow
    import torch
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    experiment_id = configure(settings)
    client = _Retrying(MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri), settings)
    name, tags = settings.model_name, {**tags, WINDOW_TAG: window}
    with _quiet(), mlflow.start_run(experiment_id=experiment_id, run_name=window, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for artifact_name, path in artifacts.items():
            _log_artifact(artifact_name, Path(path))
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            serialization_format="pickle",
            # Skip requirement inference: it reloads the model in a subprocess (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
        )
    _move(client, settings, {CHALLENGER: int(mv.version)}, actor="log_candidate",
          reason=f"new candidate for window {window}", evidence=run.info.run_id)
    return Candidate(run.info.run_id, int(mv.version), f"models:/{name}/{mv.version}", window)


def _log_artifact(artifact_name: str, path: Path) -> None:
    """Logs ``path`` under ``artifact_name`` (which may differ from the file's own name)."""
    import mlflow

    target = PurePosixPath(artifact_name)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=str(target))
        return
    folder = str(target.parent) if str(target.parent) != "." else None
    if path.name == target.name:
        mlflow.log_artifact(str(path), artifact_path=folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        renamed = Path(tmp) / target.name
        shutil.copyfile(path, renamed)
        mlflow.log_artifact(str(renamed), artifact_path=folder)


def load_model(settings: Settings, alias_or_version: str | int) -> nn.Module | None:
    """The registered module on CPU in eval mode; None when the alias is not set.

    A missing alias is a normal state (no champion before the first promotion); a
    missing version number is not, and raises ``RegistryError``.
    """
    import mlflow

    client = _client(settings)
    name = settings.model_name
    version: int | None
    if str(alias_or_version).isdigit():
        version = int(_version(client, name, alias_or_version).version)
    else:
        version = _aliases(client, name, effective=True).get(str(alias_or_version))
    if version is None:
        return None
    with _quiet():  # the version's own artifact URI: no global registry URI involved
        return mlflow.pytorch.load_model(client.get_model_version_download_uri(name, str(version)), map_location="cpu")


def champion(settings: Settings) -> Candidate | None:
    """The version behind the ``champion`` alias, or None before the first promotion."""
    return alias(settings, CHAMPION)


def alias(settings: Settings, name: str) -> Candidate | None:
    """The version behind any alias (``challenger``, ``champion``, ``previous``), or None."""
    client = _client(settings)
    version = _aliases(client, settings.model_name, effective=True).get(name)
    return None if version is None else _candidate(client, settings.model_name, version)


def try_load(settings: Settings, version: int) -> tuple[nn.Module | None, str | None]:
    """The registered model, or ``(None, why)`` when its artifact cannot be loaded.

    The gate turns ``why`` into a rejection; registry outages still raise, since
    they say nothing about the artifact.
    """
    try:
        model = load_model(settings, version)
    except RegistryError:
        raise
    except Exception as exc:  # a corrupt pickle, a missing file, a class that moved
        return None, f"{type(exc).__name__}: {_one_line(exc)}"
    if model is None:
        return None, f"version {version} has no model"
    return model, None


# --------------------------------------------------------------------------- alias history


@dataclass(frozen=True)
class AliasMove:
    """One alias change, as kept in the registered model's tags (MLflow keeps none)."""

    seq: int
    alias: str
    from_version: int | None
    to_version: int | None
    at: str
    actor: str
    reason: str
    op: str
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> AliasMove:
        return lenient_from_dict(cls, payload)


def _history_key(seq: int) -> str:
    return f"{HISTORY_PREFIX}{seq:06d}"


def history(settings: Settings) -> list[AliasMove]:
    """Every alias move of the model, oldest first (empty before the first registration)."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        tags = client.get_registered_model(settings.model_name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    moves = [AliasMove.from_dict(json.loads(v)) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(moves, key=lambda m: m.seq)


def _who(actor: str) -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{actor} ({user}@{socket.gethostname()} pid {os.getpid()})"


@contextlib.contextmanager
def _locked(client: Any, settings: Settings, actor: str) -> Iterator[str]:
    """Holds the model's alias lock: a registered model ``<name>.alias-lock`` that only one process can create.

    A holder older than ``lock_lease_s`` is presumed dead and its lock is broken;
    waiting longer than ``lock_timeout_s`` raises ``RegistryError``.
    """
    from mlflow.exceptions import MlflowException

    g = settings.gate
    lock = settings.model_name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    deadline = time.monotonic() + g.lock_timeout_s
    pause = 0.05
    while True:
        try:
            client.create_registered_model(
                lock, tags={"owner": token, "actor": _who(actor), "expires": str(time.time() + g.lock_lease_s)},
                description=f"alias lock of {settings.model_name}; held while aliases move",
            )
            break
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            holder = client.get_registered_model(lock).tags
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # released in between: try again at once
            raise
        if holder.get("owner") == token:
            break  # our create went through but its answer was lost
        if float(holder.get("expires", "0")) < time.time():
            logger.warning("breaking stale alias lock of %s held by %s", settings.model_name, holder.get("actor"))
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"alias lock {lock!r} is held by {holder.get('actor', '?')}; waited {g.lock_timeout_s:.0f}s"
            )
        time.sleep(pause * (1.0 + random.random()))  # nosec B311  # lock-wait jitter, not cryptography
        pause = min(pause * 2, 1.0)
    try:
        yield token
    finally:
        try:
            if client.get_registered_model(lock).tags.get("owner") == token:
                client.delete_registered_model(lock)
        except Exception as exc:  # the lease expires by itself
            logger.warning("could not release alias lock %s: %s", lock, _one_line(exc))


def _model_state(client: Any, name: str) -> tuple[dict[str, int], dict[str, str]]:
    rm = client.get_registered_model(name)
    return {a: int(v) for a, v in rm.aliases.items()}, dict(rm.tags)


def _finish(client: Any, name: str, op: dict[str, Any]) -> None:
    """Applies a written intent: sets each alias to its target, logs each move, clears the intent.

    Idempotent, so a crash anywhere in here is repaired by running it again.
    """
    for m in op["moves"]:
        if m["to_version"] is None:
            with contextlib.suppress(Exception):
                client.delete_registered_model_alias(name, m["alias"])
        else:
            client.set_registered_model_alias(name, m["alias"], str(m["to_version"]))
    for m in op["moves"]:
        move = AliasMove(m["seq"], m["alias"], m["from_version"], m["to_version"], op["at"], op["actor"],
                         op["reason"], op["op"], op.get("evidence", ""))
        client.set_registered_model_tag(name, _history_key(m["seq"]), json.dumps(move.to_dict()))
    client.delete_registered_model_tag(name, PENDING_TAG)


def _recover(client: Any, name: str) -> bool:
    """Rolls forward an alias move that a crash or an outage interrupted; True if there was one."""
    _, tags = _model_state(client, name)
    if PENDING_TAG not in tags:
        return False
    op = json.loads(tags[PENDING_TAG])
    logger.warning("completing interrupted alias move %s by %s: %s", op["op"], op["actor"], op["reason"])
    _finish(client, name, op)
    return True


def recover(settings: Settings) -> bool:
    """Completes an interrupted alias move, if one was left; True if there was one."""
    client = _client(settings)
    if not _aliases(client, settings.model_name) and not history(settings):
        return False
    with _locked(client, settings, "recover"):
        return _recover(client, settings.model_name)


def _move(
    client: Any,
    settings: Settings,
    targets: dict[str, int | None],
    *,
    actor: str,
    reason: str,
    evidence: str = "",
    expect: dict[str, int | None] | None = None,
) -> list[AliasMove] | None:
    """Moves aliases together, under the lock, with a compare-and-set on ``expect``.

    Returns the moves made (empty when every alias already had its target), or
    None when an alias in ``expect`` no longer points where the caller saw it (the
    caller's evidence is stale; nothing moved).
    """
    name = settings.model_name
    with _locked(client, settings, actor):
        _recover(client, name)
        current, tags = _model_state(client, name)
        for alias_name, version in (expect or {}).items():
            if current.get(alias_name) != version:
                logger.warning("%s: %s is v%s, expected v%s; nothing moved", actor, alias_name,
                               current.get(alias_name), version)
                return None
        changes = {a: v for a, v in targets.items() if current.get(a) != v}
        if not changes:
            return []
        seqs = [int(k.removeprefix(HISTORY_PREFIX)) for k in tags if k.startswith(HISTORY_PREFIX)]
        first = max(seqs, default=0) + 1
        op = {
            "op": uuid.uuid4().hex[:12],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "actor": _who(actor),
            "reason": reason[:2000],
            "evidence": evidence,
            "moves": [
                {"seq": first + i, "alias": a, "from_version": current.get(a), "to_version": v}
                for i, (a, v) in enumerate(changes.items())
            ],
        }
        client.set_registered_model_tag(name, PENDING_TAG, json.dumps(op))
        _finish(client, name, op)
    return [
        AliasMove(m["seq"], m["alias"], m["from_version"], m["to_version"], op["at"], op["actor"], op["reason"],
                  op["op"], evidence)
        for m in op["moves"]
    ]


# --------------------------------------------------------------------------- decisions


def reverted_on(settings: Settings, version: int) -> str | None:
    """The window on which ``version`` was reverted, or None if it never was."""
    tags = _version(_client(settings), settings.model_name, version).tags
    if tags.get(REVERTED_TAG) != "true":
        return None
    return tags.get(f"{REVERTED_TAG}.window") or tags.get(f"{REVERTED_TAG}.at") or "unknown"


def apply_decision(decision: GateDecision, settings: Settings, *, actor: str = "gate") -> bool:
    """Records the decision on the challenger and, if it promotes, moves the aliases; True if promoted.

    The decision is tagged on the version and its run (``gate.*``) and logged as
    ``gate_decision.json``. A promotion is a compare-and-set: ``champion`` must
    still be the version the decision was measured against, so of two gates that
    race, the second finds the champion moved and changes nothing (it returns
    False; re-gate against the new champion). ``previous`` and ``champion`` move
    together under the alias lock and the move is logged in the alias history.

    A decision that compares a version with itself (a retried cycle whose
    challenger was already promoted) is ignored, so that it cannot overwrite the
    decision that promoted it; applying the same decision twice is a no-op.
    """
    if decision.challenger_version is None:
        raise RegistryError("the gate decision names no challenger version; pass challenger_version to decide()")
    if decision.champion_version is not None and int(decision.champion_version) == int(decision.challenger_version):
        logger.info("version %s is already the champion; decision not applied", decision.challenger_version)
        return False
    client = _client(settings)
    name = settings.model_name
    version = int(decision.challenger_version)
    mv = _version(client, name, version)
    if decision.promote and mv.tags.get(REVERTED_TAG) == "true":
        from recsys_retrain.gate import _window_end

        was = mv.tags.get(f"{REVERTED_TAG}.window")
        end, then = _window_end(decision.window), _window_end(was)
        if end is None or then is None or end <= then:
            raise RegistryError(
                f"version {version} was reverted on window {was}; it needs a gate decision on a later window"
            )
    aliases_now = _aliases(client, name)
    if decision.promote and aliases_now.get(CHAMPION) == version:
        return True  # this decision was applied before (an Airflow retry)
    with _quiet():
        for key, value in _decision_tags(decision).items():
            client.set_model_version_tag(name, str(version), key, value)
            if mv.run_id:
                client.set_tag(mv.run_id, key, value)
        if mv.run_id:
            client.log_dict(mv.run_id, decision.to_dict(), DECISION_ARTIFACT)
    if not decision.promote:
        return False
    # previous first: if the move is cut short, champion still serves the old version
    targets: dict[str, int | None] = {}
    if decision.champion_version is not None:
        targets[PREVIOUS] = int(decision.champion_version)
    targets[CHAMPION] = version
    moved = _move(
        client, settings, targets, actor=actor, reason=decision.reason,
        evidence=f"run {mv.run_id} window {decision.window or mv.tags.get(WINDOW_TAG, '')}".strip(),
        expect={CHAMPION: decision.champion_version},
    )
    if moved is None:
        client.set_model_version_tag(name, str(version), "gate.applied", "False")
        client.set_model_version_tag(
            name, str(version), "gate.stale",
            f"champion moved from v{decision.champion_version} before this promotion; re-gate against the new one",
        )
        return False
    client.set_model_version_tag(name, str(version), "gate.applied", "True")
    return True


def promote(settings: Settings, version: int, *, reason: str, actor: str = "cli promote") -> list[AliasMove]:
    """Makes ``version`` the champion by hand (the old champion becomes ``previous``).

    For operators; the automatic path is :func:`apply_decision`. A reverted version
    is refused: it may return only through a gate decision on a later window.
    """
    client = _client(settings)
    name = settings.model_name
    mv = _version(client, name, version)
    if mv.tags.get(REVERTED_TAG) == "true":
        raise RegistryError(
            f"version {version} was reverted on window {mv.tags.get(REVERTED_TAG + '.window')}: "
            f"{mv.tags.get(REVERTED_TAG + '.reason', '')}; it needs a gate decision on a later window"
        )
    current = _aliases(client, name).get(CHAMPION)
    if current == int(version):
        return []
    targets: dict[str, int | None] = {PREVIOUS: current} if current is not None else {}
    targets[CHAMPION] = int(version)
    moved = _move(client, settings, targets, actor=actor, reason=reason, expect={CHAMPION: current})
    if moved is None:
        raise RegistryError(f"champion moved while promoting v{version}; try again")
    return moved


def revert(
    settings: Settings,
    *,
    reason: str,
    actor: str = "monitor",
    window: str | None = None,
    expected_champion: int | None = None,
) -> list[AliasMove]:
    """Rolls ``champion`` back to ``previous`` and tags the reverted version with why.

    Idempotent: with ``expected_champion`` set, a champion that is no longer that
    version means the revert already happened (or someone moved on) and nothing
    changes. The new ``previous`` is the version that was ``previous`` before the
    reverted promotion, taken from the alias history (none if unknown or reverted).
    """
    client = _client(settings)
    name = settings.model_name
    aliases_now = _aliases(client, name)
    current, target = aliases_now.get(CHAMPION), aliases_now.get(PREVIOUS)
    if expected_champion is None:
        expected_champion = current
    if current is None or current != expected_champion:
        logger.info("champion is v%s, not v%s: nothing to revert", current, expected_champion)
        return []
    if target is None:
        raise RegistryError(f"champion v{current} has no previous version to revert to")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, value in {
        REVERTED_TAG: "true", f"{REVERTED_TAG}.reason": reason[:5000], f"{REVERTED_TAG}.at": stamp,
        f"{REVERTED_TAG}.window": window or stamp, f"{REVERTED_TAG}.by": _who(actor),
    }.items():
        client.set_model_version_tag(name, str(current), key, value)
    before = [m for m in history(settings) if m.alias == PREVIOUS and m.to_version == target]
    older = before[-1].from_version if before else None
    if older is not None and reverted_on(settings, older) is not None:
        older = None
    moved = _move(
        client, settings, {CHAMPION: target, PREVIOUS: older}, actor=actor,
        reason=f"revert v{current} -> v{target}: {reason}", evidence=f"window {window or ''}".strip(),
        expect={CHAMPION: current, PREVIOUS: target},
    )
    return moved or []


def _decision_tags(decision: GateDecision) -> dict[str, str]:
    d = decision.to_dict()
    tags = {f"gate.{key}": str(value) for key, value in d.items() if key != "checks"}
    for check in decision.checks:
        tags[f"gate.check.{check.name}"] = f"{'pass' if check.passed else 'FAIL'}: {check.detail}"
    return tags
