"""The sharding plan: table-wise for tables that fit a device, row-wise for the ones that do not.

Every table gets the fused compute kernel: planned without constraints, TorchRec shards
small tables ``data_parallel`` with a dense kernel, and then the optimizer fused into the
backward never runs (``recsys_retrain.train.distributed``). The sharding type follows the
table's size: a table whose weights and optimizer state stay under the limit lives whole on
one rank (``table_wise``, the plan small tables have always had); a larger one (the user
table of 10^8 users, say) is split by rows across every rank (``row_wise``), so no device
has to hold it and each rank looks up and updates only its own rows.

TorchRec's bag sharder offers row-wise only on GPUs; on CPU its splits across ranks are
column-wise, which is what a table above the limit gets there.

The decision (:func:`sharding_types`) is a pure function of table sizes, the limit and the
device type, so it is tested without a process group; :func:`sharding_plan` hands its
constraints to TorchRec's planner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, Topology, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan

from recsys_retrain.model import TwoTower

SPLIT_TYPE = {"cuda": "row_wise", "cpu": "column_wise"}  # how a table too large for one device is split, per device type
STATE_PER_ROW = {"adagrad": 1.0, "rowwise_adagrad": 0.0}  # optimizer state per element of a table (besides one value per row)
DEVICE_SHARE = 0.5  # without a set limit: a table above this share of one device's memory is split


@dataclass(frozen=True)
class TableSize:
    """One embedding table: ``rows x dim`` float32 weights and its fused optimizer's state."""

    name: str
    rows: int
    dim: int
    sparse_optimizer: str = "adagrad"

    @property
    def bytes(self) -> int:
        """Weights plus Adagrad state (one value per element, or one per row for the row-wise variant)."""
        per_row = self.dim * (1.0 + STATE_PER_ROW[self.sparse_optimizer]) + 1.0
        return int(self.rows * per_row * 4)


def table_sizes(tower: TwoTower, sparse_optimizer: str = "adagrad") -> list[TableSize]:
    """The sizes of both towers' tables (their configs: the tables may still be on the meta device)."""
    return [
        TableSize(t.name, t.num_embeddings, t.embedding_dim, sparse_optimizer)
        for ebc in (tower.user_ebc, tower.item_ebc)
        for t in ebc.embedding_bag_configs()
    ]


def sharding_types(tables: list[TableSize], limit_bytes: float, device_type: str) -> dict[str, str]:
    """Each table's sharding type: ``table_wise`` up to ``limit_bytes``, split across ranks above it.

    Example:
        >>> small, big = TableSize("t_item_id", 1_700, 32), TableSize("t_user_id", 10**8, 32)
        >>> sharding_types([small, big], limit_bytes=2 * 1024**3, device_type="cuda")
        {'t_item_id': 'table_wise', 't_user_id': 'row_wise'}
    """
    split = SPLIT_TYPE.get(device_type, "row_wise")
    return {t.name: split if t.bytes > limit_bytes else "table_wise" for t in tables}


def topology(world_size: int, device_type: str) -> Topology:
    """TorchRec's topology of ``world_size`` devices of ``device_type`` (its default memory per device)."""
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size), kernel_config=KernelConfig(compute_device=device_type)
    )


def device_limit(topo: Topology, limit_mb: float | None) -> float:
    """The size in bytes above which a table is split: ``limit_mb``, else ``DEVICE_SHARE`` of one device's memory."""
    if limit_mb is not None:
        return limit_mb * 1024**2
    storage = topo.devices[0].storage
    memory = storage.hbm if topo.compute_device == "cuda" else storage.ddr
    return DEVICE_SHARE * memory


def sharding_plan(
    task: nn.Module,
    tower: TwoTower,
    device_type: str,
    world_size: int,
    limit_mb: float | None = None,
    sparse_optimizer: str = "adagrad",
    pg: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """TorchRec's plan for ``task`` under this module's constraints.

    Args:
        task: the train task whose tables are planned (built on the meta device).
        tower: its TwoTower (the table sizes).
        device_type: ``cuda`` or ``cpu``.
        world_size: ranks the tables are spread over.
        limit_mb: ``TrainSettings.row_wise_above_mb``; None: half a device.
        sparse_optimizer: the fused optimizer (its state counts in a table's size).
        pg: the process group to agree on the plan with (``collective_plan``); None: a
            planner-only call on this process (tests, dry runs).
    """
    topo = topology(world_size, device_type)
    types = sharding_types(table_sizes(tower, sparse_optimizer), device_limit(topo, limit_mb), device_type)
    constraints = {
        name: ParameterConstraints(sharding_types=[kind], compute_kernels=["fused"]) for name, kind in types.items()
    }
    planner = EmbeddingShardingPlanner(topology=topo, constraints=constraints)
    if pg is None:
        from torchrec.distributed.sharding_plan import get_default_sharders

        return planner.plan(task, get_default_sharders())
    return planner.collective_plan(task, pg=pg)


def planned_types(plan: ShardingPlan) -> dict[str, str]:
    """``{table: sharding type}`` of a plan (what tests and logs read)."""
    return {name: ps.sharding_type for module in plan.plan.values() for name, ps in module.items()}

