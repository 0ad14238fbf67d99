"""The registered model as an MLflow pyfunc: user ids in, top-K item ids out.

Every candidate is logged as a ``TopK`` python model: the trained ``Recommender``
(``artifacts/recommender.pth``, a torch pickle), a signature, an input example, the
requirements it runs with and the package's code (``code_paths``), so that

    mlflow.pyfunc.load_model("models:/two_tower@champion").predict(pd.DataFrame({"user_id": [42]}))

works in a fresh process, and ``mlflow models serve -m models:/two_tower@champion
--env-manager local`` serves it over REST. Each request reads its users from the
Feast online store (``recsys_retrain.serve.online``) of the repository recorded at
logging time (``model_config["feature_repo"]``; ``RETRAIN_FEATURE_REPO`` overrides it
where the model is served). The pipeline's own stages read the ``Recommender`` back
directly (``read_recommender``), without the pyfunc wrapper.
"""

from __future__ import annotations

import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

try:  # the base class of a pyfunc model; mlflow is always installed where this module is used
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object

ARTIFACT = "recommender"
ARTIFACT_FILE = "recommender.pth"
DEFAULT_K = 10
# Distributions the served model imports; pinned to the versions it was logged with.
REQUIREMENTS = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "numpy", "pandas", "pyarrow", "feast", "mlflow",
                "pydantic", "pydantic-settings", "pyyaml")


def bad_request(message: str) -> Exception:
    """An error the scoring server answers with HTTP 400 (MLflow's INVALID_PARAMETER_VALUE)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def parse_request(frame: pd.DataFrame, default_k: int, default_exclude: bool) -> pd.DataFrame:
    """``user_id``, ``k``, ``exclude_seen`` per row, checked; a bad field raises a one-line 400 naming it."""
    if not isinstance(frame, pd.DataFrame):
        raise bad_request(f"request: expected a table with a 'user_id' column, got {type(frame).__name__}")
    if "user_id" not in frame.columns:
        raise bad_request("request: field 'user_id' is missing")
    out = pd.DataFrame({"user_id": frame["user_id"]})
    ids = pd.to_numeric(out["user_id"], errors="coerce")
    if ids.isna().any() or (ids % 1 != 0).any():
        raise bad_request(f"request: field 'user_id' must hold integers, got {frame['user_id'].tolist()[:5]}")
    out["user_id"] = ids.astype("int64")
    k = frame["k"] if "k" in frame.columns else pd.Series(default_k, index=frame.index)
    k = pd.to_numeric(k.fillna(default_k), errors="coerce")
    if k.isna().any() or (k % 1 != 0).any() or (k < 1).any():
        raise bad_request(f"request: field 'k' must be a positive integer, got {frame['k'].tolist()[:5]}")
    out["k"] = k.astype("int64")
    exclude = frame["exclude_seen"] if "exclude_seen" in frame.columns else pd.Series(default_exclude, index=frame.index)
    exclude = exclude.where(exclude.notna(), default_exclude)
    if not exclude.map(lambda v: isinstance(v, (bool,)) or str(v).lower() in ("true", "false")).all():
        raise bad_request(f"request: field 'exclude_seen' must be true or false, got {frame['exclude_seen'].tolist()[:5]}")
    out["exclude_seen"] = exclude.map(lambda v: v if isinstance(v, bool) else str(v).lower() == "true")
    return out


def _uniform(frame: Any, default_k: int, default_exclude: bool) -> tuple[int, bool] | None:
    """``(k, exclude_seen)`` when a request needs no checks and has one setting for every user; else None."""
    if not isinstance(frame, pd.DataFrame) or not _plain(frame):
        return None
    ks = frame["k"].unique() if "k" in frame.columns else [default_k]
    excludes = frame["exclude_seen"].unique() if "exclude_seen" in frame.columns else [default_exclude]
    return (int(ks[0]), bool(excludes[0])) if len(ks) == 1 and len(excludes) == 1 else None


def _plain(frame: pd.DataFrame) -> bool:
    """Integer ids, positive integer k, boolean exclude_seen, nothing missing: no checks needed beyond these."""
    if "user_id" not in frame.columns or frame["user_id"].dtype.kind not in "iu":
        return False
    if "k" in frame.columns and (frame["k"].dtype.kind not in "iu" or (frame["k"].to_numpy() < 1).any()):
        return False
    return "exclude_seen" not in frame.columns or frame["exclude_seen"].dtype.kind == "b"


class TopK(PythonModel):
    """The pyfunc: ``predict(DataFrame[user_id, k?, exclude_seen?]) -> DataFrame[user_id, item_ids, scores, source]``.

    ``source`` is ``model``, or ``recent_popularity`` for a user the feature store has
    neither profile nor history for (see ``recsys_retrain.serve.ranker``).
    """

    def load_context(self, context) -> None:
        config = dict(context.model_config or {})
        self.setup(read_recommender_file(context.artifacts[ARTIFACT]), config)

    def setup(self, recommender, config: dict[str, Any]) -> TopK:
        """Builds the ranker and opens the feature store (``load_context``; in-process users call it directly)."""
        from recsys_retrain.serve.online import OnlineReader, open_store
        from recsys_retrain.serve.ranker import Ranker

        self.config = config
        self.ranker = Ranker(recommender)
        self.default_k = int(config.get("k", DEFAULT_K))
        self.default_exclude = bool(config.get("exclude_seen", True))
        repo = os.environ.get("RETRAIN_FEATURE_REPO") or config.get("feature_repo")
        self.store = OnlineReader(open_store(Path(repo))) if repo else None
        return self

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from recsys_retrain.serve.online import online_requests

        if self.store is None:
            raise RuntimeError("no feature repository to read users from: set RETRAIN_FEATURE_REPO")
        uniform = _uniform(model_input, self.default_k, self.default_exclude)
        if uniform is not None:  # the usual request: typed ids, one k and one exclude_seen for all of them
            users = online_requests(self.store, model_input["user_id"].tolist())
            return self.ranker.top_k(users, k=uniform[0], exclude_seen=uniform[1]).frame
        request = parse_request(model_input, self.default_k, self.default_exclude)
        users = online_requests(self.store, request["user_id"])
        parts = []
        for (k, exclude), rows in request.groupby(["k", "exclude_seen"], sort=False):
            answer = self.ranker.top_k(users.loc[rows.index], k=int(k), exclude_seen=bool(exclude)).frame
            parts.append(answer.set_index(rows.index))
        return pd.concat(parts).sort_index().reset_index(drop=True)


def signature():
    """Input: ``user_id`` (long), optional ``k`` (long) and ``exclude_seen`` (boolean); output: one row per user."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([ColSpec("long", "user_id"), ColSpec("long", "k", required=False),
                     ColSpec("boolean", "exclude_seen", required=False)])
    outputs = Schema([ColSpec("long", "user_id"), ColSpec(Array("long"), "item_ids"), ColSpec(Array("double"), "scores"),
                      ColSpec("string", "source")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    """The installed versions of ``REQUIREMENTS`` (those present), as pip lines."""
    lines = []
    for name in REQUIREMENTS:
        try:
            lines.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return lines


def log_served_model(recommender, *, feature_repo: Path, k: int = DEFAULT_K, exclude_seen: bool = True):
    """Logs ``recommender`` as a ``TopK`` pyfunc named ``model`` in the active run; returns MLflow's ModelInfo."""
    import mlflow
    import torch

    import recsys_retrain
    from recsys_retrain.model import Recommender

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT_FILE
        torch.save(recommender, path)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TopK(),
            artifacts={ARTIFACT: str(path)},
            code_paths=[str(Path(recsys_retrain.__file__).parent)],
            signature=signature(),
            # MLflow serves the example through the logged model once, a check that it loads and answers (about
            # a second); a module that is not a Recommender (the registry's own tests) has no example to answer.
            input_example=pd.DataFrame({"user_id": [1, 2], "k": [DEFAULT_K, DEFAULT_K]}) if isinstance(
                recommender, Recommender) else None,
            pip_requirements=requirements(),
            model_config={"feature_repo": str(Path(feature_repo).resolve()), "k": int(k), "exclude_seen": bool(exclude_seen)},
        )


def read_recommender_file(path: str | Path):
    """The ``Recommender`` pickled at ``path`` (the pyfunc's artifact), on CPU in eval mode."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False).eval()  # nosec B614  # our own registry's artifact
