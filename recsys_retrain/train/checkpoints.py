"""Checkpoints of a training run: the epoch resume point of each rank, and the final one-dict model.

``checkpoints/last.rank<R>.pt`` holds everything needed to continue after an epoch
(sharded weights, both optimizers, RNG states, progress, scheduler state and
snapshots), so a killed run's retry resumes where it stopped and ends as an
uninterrupted run would. ``model.pt`` is the gathered model as one dict (weights,
encoder, catalogue, config) that ``load_checkpoint`` turns into a Recommender.
Both are written to a temporary file and renamed (``recsys_retrain.io``); a failed
write is one line that says what was kept.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import write_with
from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower
from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.resource import ResourceController
from recsys_retrain.schedule.trace import Trace
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.distributed import all_finite, unsharded

log = logging.getLogger(__name__)


def epoch_checkpoint_path(out_dir: Path) -> Path:
    """This rank's resume point: sharded weights are saved per rank, so resume needs the same world size."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return out_dir / "checkpoints" / f"last.rank{rank}.pt"


def save_epoch_checkpoint(
    out_dir: Path,
    dmp: DistributedModelParallel,
    opt: CombinedOptimizer,
    rng: np.random.Generator,
    settings: TrainSettings,
    *,
    epoch: int,
    steps: int,
    losses: list[float],
    sched: AdaptiveScheduler | None = None,
    trace: Trace | None = None,
    batch_size: int | None = None,
    resource: ResourceController | None = None,
) -> None:
    """Everything needed to continue after ``epoch``: weights, both optimizers' states, RNG, progress.

    With a scheduler, its state and its in-memory snapshots (best weights, last good
    weights) go into the same file, so a resumed run ends as an uninterrupted one.

    Written to a temp file and renamed, so a crash mid-write leaves the previous epoch's file.
    """
    path = epoch_checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": dmp.state_dict(),
        "optimizer": opt.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "settings": settings.model_dump(),
        "world_size": dist.get_world_size(),
        "epoch": epoch,
        "steps": steps,
        "losses": list(losses),
        "batch_size": batch_size,
        "scheduler": sched.state_dict() if sched is not None else None,
        "scheduler_snapshots": sched.snapshots() if sched is not None else None,
        "trace": trace.to_dict() if trace is not None else None,
        "resource": resource.state_dict() if resource is not None else None,
    }
    if not all_finite(dmp):
        raise PipelineError(f"refusing to write {path.name}: the model has non-finite weights")
    atomic_save(state, path, "epoch checkpoint")


def load_epoch_checkpoint(
    out_dir: Path,
    dmp: DistributedModelParallel,
    opt: CombinedOptimizer,
    rng: np.random.Generator,
    settings: TrainSettings,
    sched: AdaptiveScheduler | None = None,
    trace: Trace | None = None,
    resource: ResourceController | None = None,
) -> dict[str, Any] | None:
    """Restores the last epoch checkpoint of an interrupted run with the same settings and world size.

    A checkpoint of other settings is ignored (and replaced at the next epoch): resuming
    it would silently mix two configurations.
    """
    path = epoch_checkpoint_path(out_dir)
    if not path.exists():
        return None
    # Sharded tensors are not plain tensors, so weights_only loading cannot read them;
    # the file is one this function's twin wrote into the run's own folder.
    state = torch.load(path, map_location="cpu", weights_only=False)  # nosec B614
    if state["settings"] != settings.model_dump() or state["world_size"] != dist.get_world_size():
        log.warning("ignoring %s: written with other settings or world size", path)
        return None
    dmp.load_state_dict(state["model"])
    opt.init_state()  # materialise optimizer state so the saved one can be loaded into it
    opt.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    if sched is not None and state.get("scheduler") is not None:
        sched.load_state_dict(state["scheduler"])
        sched.load_snapshots(state["scheduler_snapshots"])
    if trace is not None and state.get("trace") is not None:
        trace.load(state["trace"])
    if resource is not None and state.get("resource") is not None:
        resource.load_state_dict(state["resource"])
    return state


def save_checkpoint(
    dmp: DistributedModelParallel,
    encoder: FeatureEncoder,
    catalogue: pd.DataFrame,
    recent: np.ndarray,
    settings: TrainSettings,
    out_dir: Path,
    prior: np.ndarray | None = None,
    blend: float = 0.0,
) -> Path:
    """One dict (weights, encoder, catalogue, recent counts, prior features, serving blend, config), written to a
    temp file then renamed."""
    recommender = unsharded(dmp, encoder, catalogue, recent, settings.embedding_dim, prior)
    path = out_dir / "model.pt"
    if not all_finite(recommender.model):
        raise PipelineError("refusing to save model.pt: the trained model has non-finite weights")
    if dist.get_rank() != 0:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "model": recommender.model.state_dict(),
        "encoder": encoder.to_dict(),
        "catalogue": recommender.catalogue.to_dict(orient="list"),
        "recent": torch.from_numpy(np.asarray(recent, dtype=np.float64)),
        "prior": torch.from_numpy(recommender.prior_features),
        "blend": float(blend),
        "config": settings.model_dump(),
    }
    atomic_save(state, path, "model")
    return path


def atomic_save(state: dict[str, Any], path: Path, what: str) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: ``path`` is whole or untouched.

    A failed write (disk full, file-size limit) removes the partial temp file and raises a
    one-line PipelineError that says the previous file is kept; torch's own message
    ("PytorchStreamWriter failed writing file data/0") names neither the file nor the cause.
    """
    try:
        write_with(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as exc:
        free = shutil.disk_usage(path.parent).free
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PipelineError(
            f"could not write the {what} {path} ({cause}; {free / 2**20:.1f} MiB free on its disk): {kept}"
        ) from exc


def load_checkpoint(path: Path) -> Recommender:
    """The Recommender saved by ``train``, on CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    encoder = FeatureEncoder.from_dict(ckpt["encoder"])
    model = build_two_tower(encoder, ckpt["config"]["embedding_dim"], "cpu")
    model.load_state_dict(ckpt["model"])
    return Recommender(model, encoder, pd.DataFrame(ckpt["catalogue"]), ckpt["recent"].numpy(), ckpt["prior"].numpy(),
                       ckpt["blend"])
