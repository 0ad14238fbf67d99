"""Candidates: a trained model logged as an MLflow run, registered as a version, loaded back.

:func:`log_candidate` is what the gate task calls once per window (idempotent per
window); :func:`champion`, :func:`alias` and :func:`try_load` are how every stage
reads a version back.

Each version is an MLflow pyfunc (``recsys_retrain.serve.pyfunc.TopK``: user ids in,
top-K item ids out, with a signature, an input example, its requirements and the
package's code), so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` serves it
anywhere. The pipeline's stages read the trained ``Recommender`` inside it directly
(:func:`read_model`: a torch pickle that refers to ``recsys_retrain.model``); versions
logged before the pyfunc, in MLflow's pytorch flavour, still load.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from recsys_retrain.errors import RegistryError
from recsys_retrain.records import lenient_from_dict
from recsys_retrain.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS, move, read_aliases
from recsys_retrain.registry.client import RetryingClient, configure, connect, model_version, one_line, quiet, retry
from recsys_retrain.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import nn

WINDOW_TAG = "window"
MODEL_ARTIFACT = "model"
# Lineage: the span of interactions a version has seen (ISO; data_end exclusive), and what a refit was made from.
DATA_START_TAG, DATA_END_TAG = "data_start", "data_end"
REFIT_OF_TAG, REFIT_TAG = "refit_of", "refit"


@dataclass(frozen=True)
class Candidate:
    """One registered model version, the window it was trained for, and its lineage.

    ``data_end`` is the end of the data it has seen ("" on versions registered before
    it was recorded: the window's start is then that end); ``refit_of`` is the gated
    version a refit was made from (None for a gated challenger).
    """

    run_id: str
    version: int
    model_uri: str
    window: str
    data_end: str = ""
    refit_of: int | None = None

    @property
    def trained_until(self) -> str:
        """The end of the data it has seen: ``data_end``, else its window's start (a challenger sees what came before)."""
        return self.data_end or self.window.split("/")[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Candidate:
        return lenient_from_dict(cls, {**payload, "version": int(payload["version"])})


def _candidate(client: MlflowClient, name: str, version: int) -> Candidate:
    mv = model_version(client, name, version)
    refit_of = mv.tags.get(REFIT_OF_TAG)
    return Candidate(mv.run_id or "", int(mv.version), f"models:/{name}/{mv.version}", mv.tags.get(WINDOW_TAG, ""),
                     mv.tags.get(DATA_END_TAG, ""), int(refit_of) if refit_of else None)


def _first_tagged(settings: Settings, tag: str, value: str) -> Candidate | None:
    """The lowest version whose ``tag`` is ``value``, if any: what a retried step registered before."""
    client = connect(settings)
    name = settings.model_name
    with quiet():
        found = client.search_model_versions(f"name='{name}' and tag.{tag}='{value}'")
    return _candidate(client, name, min(int(mv.version) for mv in found)) if found else None


def find_candidate(settings: Settings, window: str) -> Candidate | None:
    """The version already registered for ``window``, if any (the lowest one)."""
    if "'" in window:
        raise RegistryError(f"window {window!r} must not contain a quote")
    return _first_tagged(settings, WINDOW_TAG, window)


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


def find_refit(settings: Settings, gated: int) -> Candidate | None:
    """The refit already registered for the gated version ``gated``, if any (the lowest one)."""
    return _first_tagged(settings, REFIT_OF_TAG, str(int(gated)))


def log_refit(
    model: nn.Module,
    *,
    settings: Settings,
    gated: int,
    window: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, Any],
) -> Candidate:
    """Logs and registers the refit of the gated version ``gated`` as its own version; no alias moves.

    Idempotent per gated version (tag ``refit_of``), as :func:`log_candidate` is per
    window, so a retried refit task registers one version. It carries the cycle's
    ``window`` tag too (the cycle it came from) but is never what :func:`find_candidate`
    returns for it: the gated version, registered first, has the lower number.
    ``challenger`` stays on the gated version: the refit was not judged, it is what
    serves when its gated version is promoted (``promotion.apply_decision(serve=...)``).
    """
    existing = find_refit(settings, gated)
    if existing is not None:
        return existing
    tags = {**{str(k): str(v) for k, v in tags.items()}, REFIT_OF_TAG: str(int(gated))}
    return _register(model, settings, window, params, metrics, {}, tags, challenger=False)


def tag_version(settings: Settings, version: int, tags: dict[str, Any]) -> None:
    """Sets ``tags`` on a model version (and its run), e.g. the gated version's link to its refit."""
    client = connect(settings)
    mv = model_version(client, settings.model_name, version)
    with quiet():
        for key, value in tags.items():
            client.set_model_version_tag(settings.model_name, str(version), key, str(value))
            if mv.run_id:
                client.set_tag(mv.run_id, key, str(value))


def _register(
    model: nn.Module,
    settings: Settings,
    window: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    artifacts: dict[str, Path],
    tags: dict[str, str],
    challenger: bool = True,
) -> Candidate:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from recsys_retrain.serve.pyfunc import log_served_model

    experiment_id = configure(settings)
    client = RetryingClient(MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri), settings)
    name, tags = settings.model_name, {**tags, WINDOW_TAG: window}
    with quiet(), mlflow.start_run(experiment_id=experiment_id, run_name=window, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})  # null: an empty segment
        for artifact_name, path in artifacts.items():
            _log_artifact(artifact_name, Path(path))
        info = log_served_model(model, feature_repo=settings.feature_repo, k=settings.serve.k,
                                exclude_seen=settings.serve.exclude_seen)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
        )
    if challenger:
        move(client, settings, {CHALLENGER: int(mv.version)}, actor="log_candidate",
             reason=f"new candidate for window {window}", evidence=run.info.run_id)
    refit_of = tags.get(REFIT_OF_TAG)
    return Candidate(run.info.run_id, int(mv.version), f"models:/{name}/{mv.version}", window,
                     tags.get(DATA_END_TAG, ""), int(refit_of) if refit_of else None)


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
    missing version number is not, and raises ``RegistryError``. Reading the artifact
    is retried like every registry call: a flaky artifact store is not a broken model.
    """
    client = connect(settings)
    name = settings.model_name
    version: int | None
    if str(alias_or_version).isdigit():
        version = int(model_version(client, name, alias_or_version).version)
    else:
        version = read_aliases(client, name, effective=True).get(str(alias_or_version))
    if version is None:
        return None
    uri = client.get_model_version_download_uri(name, str(version))
    with quiet():  # the version's own artifact URI: no global registry URI involved
        return retry(settings, f"loading version {version}", lambda: read_model(uri))


def read_model(uri: str) -> nn.Module:
    """The ``Recommender`` of a logged model: the served pyfunc's artifact, or (versions logged before it) the pytorch flavour."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from recsys_retrain.serve.pyfunc import ARTIFACT_FILE, read_recommender_file

    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/{ARTIFACT_FILE}")
    except (MlflowException, OSError):
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    return read_recommender_file(path)


def champion(settings: Settings) -> Candidate | None:
    """The version behind the ``champion`` alias, or None before the first promotion."""
    return alias(settings, CHAMPION)


def alias(settings: Settings, name: str) -> Candidate | None:
    """The version behind any alias (``challenger``, ``champion``, ``previous``), or None."""
    client = connect(settings)
    version = read_aliases(client, settings.model_name, effective=True).get(name)
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
        return None, f"{type(exc).__name__}: {one_line(exc)}"
    if model is None:
        return None, f"version {version} has no model"
    return model, None


def comparator(settings: Settings) -> tuple[Candidate | None, nn.Module | None, str | None]:
    """The version a challenger is judged against, its model, and why the champion is not that version.

    The champion, when its artifact loads. When it cannot be loaded (a corrupt or missing
    artifact; a flaky store is retried first and raises instead), the ``previous``
    version stands in, so an unvetted challenger never passes on the floor alone. When
    neither loads, the champion stays and this raises a one-line RegistryError.

    Returns:
        ``(None, None, None)`` before the first promotion; else the version compared
        with, its model, and None or the reason the champion could not be used.
    """
    current = champion(settings)
    if current is None:
        return None, None, None
    model, why = try_load(settings, current.version)
    if model is not None:
        return current, model, None
    fallback = alias(settings, PREVIOUS)
    if fallback is not None and fallback.version != current.version:
        stand_in, stand_in_why = try_load(settings, fallback.version)
        if stand_in is not None:
            return fallback, stand_in, f"champion v{current.version} cannot be loaded ({why})"
        why = f"{why}; previous v{fallback.version} neither ({stand_in_why})"
    raise RegistryError(
        f"champion v{current.version} cannot be loaded ({why}) and no version can stand in for it: the champion "
        "stays and no challenger is judged; repair its artifact or promote a loadable version"
    )
