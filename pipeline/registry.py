"""MLflow tracking and registry: log a challenger, gate it, move the aliases.

Three aliases on ``settings.model_name`` carry the state of the pipeline:
``challenger`` (the latest candidate), ``champion`` (the version that serves) and
``previous`` (the champion before it, the target of a rollback). Stages are
deprecated in MLflow 3, so nothing here uses them.

The gate itself, :func:`decide`, is a pure function of two metric values; the rest
of the module is a thin adapter around ``MlflowClient`` so that each Airflow task
(a fresh process) can call one function with the settings and nothing else.
Nothing touches MLflow at import time: :func:`configure` runs at the start of
every public call.

Models are stored in MLflow's pickle format (``serialization_format="pickle"``):
the default ``pt2`` format traces ``forward`` with a tensor input example, which a
TorchRec model taking KeyedJaggedTensors cannot provide. The pickle refers to
classes by module (``pipeline.model.Recommender``), so the loading process must be
able to import ``pipeline``, as every stage of this project can. No ``code_paths``
snapshot is logged: MLflow would prepend it to ``sys.path`` on every load and a
process that has not yet imported ``pipeline`` would then run the snapshot instead
of the installed package.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import RegistryError
from pipeline.settings import GateSettings, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import nn

logger = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
WINDOW_TAG = "window"
MODEL_ARTIFACT = "model"
DECISION_ARTIFACT = "gate_decision.json"


def _from_dict(cls: type, payload: dict[str, Any]) -> Any:
    """Ignores unknown keys, so a dict written by a newer version still loads."""
    return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})


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
        return _from_dict(cls, {**payload, "version": int(payload["version"])})


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger replaces the champion, with the numbers that decided it."""

    metric: str
    challenger_value: float
    champion_value: float | None
    min_delta: float
    promote: bool
    reason: str
    challenger_version: int | None = None
    champion_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> GateDecision:
        return _from_dict(cls, payload)


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
        client = mlflow.MlflowClient()
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


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    configure(settings)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def _aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """Alias -> version; empty before the first registration (no registered model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}
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
    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
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
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
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
        version = _aliases(client, name).get(str(alias_or_version))
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
    version = _aliases(client, settings.model_name).get(name)
    return None if version is None else _candidate(client, settings.model_name, version)


def apply_decision(decision: GateDecision, settings: Settings) -> None:
    """Records the decision on the challenger and, if it promotes, moves the aliases.

    On promotion ``previous`` moves to the decision's champion version before
    ``champion`` moves to the challenger, so a crash in between never leaves
    ``previous`` pointing at a stale version. Aliases come from the decision, not
    from the registry's current state, so applying the same decision twice leaves
    the same state. A decision that compares a version with itself (a retried
    cycle whose challenger was already promoted) is ignored, so that it cannot
    overwrite the decision that promoted it.
    """
    if decision.challenger_version is None:
        raise RegistryError("the gate decision names no challenger version; pass challenger_version to decide()")
    if decision.champion_version is not None and int(decision.champion_version) == int(decision.challenger_version):
        logger.info("version %s is already the champion; decision not applied", decision.challenger_version)
        return
    client = _client(settings)
    name = settings.model_name
    version = str(decision.challenger_version)
    mv = _version(client, name, version)
    with _quiet():
        for key, value in _decision_tags(decision).items():
            client.set_model_version_tag(name, version, key, value)
            if mv.run_id:
                client.set_tag(mv.run_id, key, value)
        if mv.run_id:
            client.log_dict(mv.run_id, decision.to_dict(), DECISION_ARTIFACT)
        if decision.promote:
            if decision.champion_version is not None:
                client.set_registered_model_alias(name, PREVIOUS, str(decision.champion_version))
            client.set_registered_model_alias(name, CHAMPION, version)


def _decision_tags(decision: GateDecision) -> dict[str, str]:
    return {f"gate.{key}": str(value) for key, value in decision.to_dict().items()}
