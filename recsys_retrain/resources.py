"""Files the package ships besides its modules: the Airflow DAGs and the Feast repository's definitions.

They are packaged as ``recsys_retrain.dags`` and ``recsys_retrain.feature_repo`` (from the
source tree's ``dags/`` and ``features/``, see ``pyproject.toml``), so a wheel installed
anywhere finds them, and an editable checkout finds the tree's own folders. Settings can
point elsewhere: ``dags_folder`` for the DAGs, ``feature_repo`` for the working
Feast repository, which is seeded from the shipped definitions when it has none.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings

DEFINITIONS = ("feature_store*.yaml", "*.py")  # what a Feast repository holds besides its generated data/


SOURCE_FOLDERS = {"dags": "dags", "feature_repo": "features"}  # pyproject.toml's package-dir


def shipped(package: str) -> Path:
    """The folder of a data package shipped with ``recsys_retrain`` (``dags`` or ``feature_repo``).

    An installed wheel has it inside the package; a source tree imported from its root
    (an editable install, or the tree on ``sys.path``) has it at the top of the tree.
    """
    spec = importlib.util.find_spec(f"recsys_retrain.{package}")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    tree = Path(__file__).resolve().parents[1] / SOURCE_FOLDERS[package]
    if tree.is_dir() and (tree.parent / "pyproject.toml").exists():
        return tree
    raise PipelineError(f"recsys_retrain.{package} is missing from this installation; reinstall the package")


def dags_folder(settings: Settings) -> Path:
    """The Airflow DAG folder: ``settings.dags_folder``, else the DAGs shipped with the package."""
    return Path(settings.dags_folder).resolve() if settings.dags_folder else shipped("dags")


def copy_definitions(source: Path, dest: Path) -> Path:
    """The Feast definitions of the repository ``source`` (never its data) copied into ``dest``; returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in DEFINITIONS:
        for path in sorted(Path(source).glob(pattern)):
            shutil.copy(path, dest / path.name)
    return dest


def seed_feature_repo(repo: Path) -> bool:
    """Copies the shipped Feast definitions into ``repo`` when it has no ``feature_store.yaml``; True if it did.

    A repository that has its own definitions is never touched.
    """
    if (Path(repo) / "feature_store.yaml").exists():
        return False
    copy_definitions(shipped("feature_repo"), repo)
    return True
