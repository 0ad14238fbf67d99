"""Paths from users (CLI options, DAG Params) must stay inside the data root.

A path typed on a command line or passed as a DAG run's Param is resolved
(``..`` segments and symbolic links followed) and refused unless it lands inside
``settings.data_root``, so a run cannot read or overwrite files elsewhere on the
machine (``--events ../../etc/passwd``, ``--out /``). The default data root is the
folder that holds the pipeline's home (the working copy, for the default
``.retrain`` home); production sets ``RETRAIN_DATA_ROOT``.
"""

from __future__ import annotations

from pathlib import Path

from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings


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
