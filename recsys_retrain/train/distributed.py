"""The process group, the sharded two-tower model and its two optimizers.

One place owns the process group, the sharding plan, the fused embedding
optimizer and the dense optimizer. On CPU this is gloo with one process; the same
code runs under ``torchrun`` with more processes (NCCL on GPUs).

Two TorchRec behaviours shape this module (both seen with torchrec 1.8 on CPU):
small tables are planned ``data_parallel`` with a dense kernel unless constrained,
and then the in-backward optimizer never runs; so the planner is told to use the
fused kernel, table-wise, or split across ranks for a table too large for one
device (``recsys_retrain.train.sharding``). And a learning rate written into
``fused_optimizer.param_groups`` reaches the kernel only on ``fused_optimizer.step()``,
so the loop calls it every step.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.inference.state_dict_transform import state_dict_gather, state_dict_to_device
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recsys_retrain.model import FeatureEncoder, Recommender, TwoTower, TwoTowerTrainTask, build_two_tower
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.sharding import sharding_plan


def init_process_group() -> None:
    """Joins the ``torchrun`` group when launched by it, else a one-process gloo group.

    The one-process group uses an in-memory store, so repeated training in one
    process (tests, ``dag.test()``) needs no free port.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device(f"cuda:{local}")
    return torch.device("cpu")


SPARSE_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad}  # -> EXACT_(ROWWISE_)ADAGRAD


def shard(
    task: TwoTowerTrainTask, sparse_lr: float, dev: torch.device, sparse_optimizer: str = "adagrad",
    row_wise_above_mb: float | None = None,
) -> DistributedModelParallel:
    """Wraps the train task in DMP with the embeddings' Adagrad (element- or row-wise) fused into their backward.

    The plan (``recsys_retrain.train.sharding``): every table with the fused kernel,
    table-wise, except those above ``row_wise_above_mb``, which are split across the ranks.
    """
    tower = task.model
    for ebc in (tower.user_ebc, tower.item_ebc):
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS[sparse_optimizer], ebc.parameters(), {"lr": sparse_lr})
    plan = sharding_plan(task, tower, dev.type, dist.get_world_size(), row_wise_above_mb, sparse_optimizer,
                         pg=dist.GroupMember.WORLD)
    return DistributedModelParallel(module=task, device=dev, plan=plan)


def optimizer(
    dmp: DistributedModelParallel, dense_lr: float, weight_decay: float = 0.0, beta1: float = 0.9
) -> CombinedOptimizer:
    """Adam on the dense tower layers, combined with DMP's fused embedding optimizer.

    ``weight_decay`` (L2) and ``beta1`` apply to the dense layers only: the fused
    Adagrad of the embeddings takes neither.
    """
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=dense_lr, betas=(beta1, 0.999), weight_decay=weight_decay),
    )
    return CombinedOptimizer([("sparse", dmp.fused_optimizer), ("dense", dense)])


def sharded_model(
    encoder: FeatureEncoder, settings: TrainSettings, dev: torch.device, plan: SchedulePlan | None = None
) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """The two-tower train task built on the meta device, sharded by DMP, and its combined optimizer.

    Args:
        encoder: the fitted feature encoder (table sizes).
        settings: embedding size, temperature and both learning rates.
        dev: the device the shards live on.
        plan: a SchedulePlan whose weight decay and beta1 start the dense Adam; None: Adam's defaults.

    Returns:
        The sharded model, and its optimizer with the dense state materialised.
    """
    task = TwoTowerTrainTask(build_two_tower(encoder, settings.embedding_dim, "meta"), settings.temperature)
    dmp = shard(task, settings.sparse_lr, dev, settings.sparse_optimizer, settings.row_wise_above_mb)
    dense_adam = {"weight_decay": plan.weight_decay, "beta1": plan.beta1} if plan is not None else {}
    opt = optimizer(dmp, settings.dense_lr, **dense_adam)
    opt.init_state()  # materialise the dense optimizer's state, so snapshots and checkpoints always hold it
    return dmp, opt


def dense_parameters(dmp: DistributedModelParallel) -> list[torch.Tensor]:
    """The tower layers' weights that the dense optimizer steps (the fused embeddings left out)."""
    return [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]


def rank_share(batches: list[np.ndarray]) -> list[np.ndarray]:
    """This process's batches: every rank gets the same count, as DMP's collectives need.

    All ranks draw the same shuffled list (same seed), then take every world-size-th
    batch; the few left over at the end are dropped for the epoch.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    usable = len(batches) - len(batches) % world
    return batches[rank:usable:world]


def mean_across_ranks(loss_sum: float, count: int) -> float:
    """Mean loss over the samples of all ranks."""
    totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64)
    if dist.get_world_size() > 1:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1].clamp(min=1))


def unsharded(
    dmp: DistributedModelParallel,
    encoder: FeatureEncoder,
    catalogue: pd.DataFrame,
    recent: np.ndarray,
    dim: int,
    prior: np.ndarray | None = None,
) -> Recommender:
    """Gathers the sharded weights into a plain CPU Recommender (rank 0 holds the result).

    ``recent`` and ``prior`` (``item_prior`` features) are the catalogue's at the end of
    training: what the Recommender scores with when it is given no history.
    """
    plain = TwoTowerTrainTask(build_two_tower(encoder, dim, "cpu"))
    state = state_dict_to_device(dmp.state_dict(), pg=dist.GroupMember.WORLD, device=torch.device("cpu"))
    target = plain.state_dict()
    state_dict_gather(state, target)
    plain.load_state_dict(target)
    return Recommender(plain.model, encoder, catalogue, recent, prior)


@torch.no_grad()
def load_tower(dmp: DistributedModelParallel, tower: TwoTower) -> None:
    """Copies a plain TwoTower's weights into the sharded train task, each rank its own shards.

    Every rank must pass the same weights. A sharded table takes the rows and columns of
    its local shards (the shard metadata's offsets); the dense layers are copied whole.
    """
    plain = {f"model.{name}": value for name, value in tower.state_dict().items()}
    for name, value in dmp.state_dict().items():
        full = plain[name]
        if not hasattr(value, "local_shards"):
            value.copy_(full)
            continue
        for shard in value.local_shards():
            (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(full[row : row + rows, col : col + cols])


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every weight of ``module`` (sharded or not) is finite: a NaN model is never written."""
    for value in module.state_dict().values():
        tensors = [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            return False
    return True
