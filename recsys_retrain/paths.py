"""Where files live: one folder per cycle, and paths from users that must stay inside the data root.

:class:`CyclePaths` names the files of one retraining cycle, which its steps
(``recsys_retrain.cycle``, ``recsys_retrain.gating``) write and read.

Paths from users (CLI options, DAG Params) must stay inside the data root.

A path typed on a command line or passed as a DAG run's Param is resolved
(``..`` segments and symbolic links followed) and refused unless it lands inside
``settings.data_root``, so a run cannot read or overwrite files elsewhere on the
machine (``--events ../../etc/passwd``, ``--out /``). The default data root is the
folder that holds the pipeline's home (the working copy, for the default
``.retrain`` home); production sets ``RETRAIN_DATA_ROOT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import utc
from recsys_retrain.settings import Settings


@dataclass(frozen=True)
class CyclePaths:
    """Where one cycle's files live; the window's dates name the folder."""

    root: Path

    @classmethod
    def of(cls, settings: Settings, start: str, end: str) -> CyclePaths:
        return cls(settings.runs_dir / cls.folder_name(start, end))

    @staticmethod
    def folder_name(start: str, end: str) -> str:
        """The cycle folder's name: the window's dates, ``YYYYMMDD-YYYYMMDD``."""
        return f"{utc(start):%Y%m%d}-{utc(end):%Y%m%d}"

    history = property(lambda self: self.root / "history.parquet")
    holdout = property(lambda self: self.root / "holdout.parquet")
    reference = property(lambda self: self.root / "reference.parquet")
    catalogue = property(lambda self: self.root / "catalogue.parquet")
    drift_dir = property(lambda self: self.root / "drift")
    model_dir = property(lambda self: self.root / "model")
    summary = property(lambda self: self.root / "summary.json")
    profile = property(lambda self: self.root / "profile.json")
    plan = property(lambda self: self.root / "plan.json")
    per_user = property(lambda self: self.root / "per_user_metrics.json")
    decision = property(lambda self: self.root / "gate_decision.json")
    refit_dir = property(lambda self: self.root / "refit")  # the refit's training data, model.pt and trace
    refit = property(lambda self: self.root / "refit.json")


def data_root(settings: Settings) -> Path:
    """The folder every user-given path must resolve into.

    Example:
        >>> data_root(Settings(home="/srv/retrain/home", data_root=None))
        PosixPath('/srv/retrain')
    """
    root = settings.data_root if settings.data_root is not None else Path(settings.home).absolute().parent
    return Path(root).resolve()


def inside_root(path: str | Path, root: Path, what: str) -> Path:
    """``path`` resolved, if it lies inside ``root``; else a one-line PipelineError naming ``what``.

    Relative paths are taken from the working directory, as a shell user means them.

    Args:
        path: the user's value.
        root: the allowed folder (already resolved).
        what: the option or Param name, for the message (``--events``).

    Returns:
        The absolute, resolved path.

    Example:
        >>> inside_root("/data/in/batch.csv", Path("/data"), "--events")
        PosixPath('/data/in/batch.csv')
    """
    text = str(path)
    if not text.strip():
        raise PipelineError(f"{what}: empty path")
    if "\x00" in text:
        raise PipelineError(f"{what}: path contains a NUL byte")
    resolved = Path(text).expanduser().resolve()
    if not resolved.is_relative_to(root):
        raise PipelineError(
            f"{what} {text!r} resolves to {resolved}, outside the data root {root} (set RETRAIN_DATA_ROOT to allow it)"
        )
    return resolved


def user_path(path: str | Path, settings: Settings, what: str) -> Path:
    """``inside_root`` against the settings' data root: the one call CLI commands and DAG tasks make."""
    return inside_root(path, data_root(settings), what)


OWNED_MARKER = ".recsys-retrain"  # written into each folder a command creates and may later replace


def replaceable_folder(path: Path, settings: Settings, what: str) -> Path:
    """``path``, if a command may delete and rebuild it; else a one-line PipelineError naming ``what``.

    Refused: the data root itself, a folder holding a git repository, and a non-empty
    folder the project did not create (no ``.recsys-retrain`` marker) outside the
    pipeline's home. So ``retrain backtest --out .`` in a checkout never removes it.

    Example:
        >>> replaceable_folder(Path("/srv/retrain"), Settings(home="/srv/retrain/home"), "--out")
        Traceback (most recent call last):
        ...
        recsys_retrain.errors.PipelineError: --out /srv/retrain is the data root; choose a new folder inside it
    """
    path = Path(path).resolve()
    if path == data_root(settings):
        raise PipelineError(f"{what} {path} is the data root; choose a new folder inside it")
    if (path / ".git").exists():
        raise PipelineError(f"{what} {path} holds a git repository; choose a new folder")
    own = path.is_relative_to(Path(settings.home).resolve()) or (path / OWNED_MARKER).exists()
    if path.is_dir() and any(path.iterdir()) and not own:
        raise PipelineError(f"{what} {path} is not empty and was not created by retrain; choose a new or empty folder")
    return path


def mark_owned(folder: Path) -> Path:
    """Creates ``folder`` with the marker that lets a later run replace it; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNED_MARKER).write_text("created by retrain; a later run may delete and rebuild this folder\n")
    return folder


def demo_may_reset(settings: Settings) -> None:
    """The demo resets the feature store and the registry and promotes a bad model by hand: only on its own stores.

    Its own stores are the local deployment's: the Feast repository's local configuration
    and MLflow on SQLite under the home. A production deployment or a configured
    tracking server raises a one-line PipelineError before anything is touched.
    """
    if settings.deployment != "local":
        raise PipelineError(
            f"retrain demo resets the feature store and the registry, so it runs only on its own local stores; "
            f"deployment is {settings.deployment!r} (unset RETRAIN_DEPLOYMENT)"
        )
    if settings.tracking_uri:
        raise PipelineError(
            f"retrain demo resets the registry, so it runs only on MLflow under its home; tracking_uri is "
            f"{settings.tracking_uri!r} (unset RETRAIN_TRACKING_URI)"
        )
