"""The sharding plan: table-wise below the size limit, split across ranks above it, always the fused kernel."""

from __future__ import annotations

import numpy as np
import torch

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.train.distributed import init_process_group, load_tower, optimizer, shard, unsharded
from recsys_retrain.train.sharding import TableSize, device_limit, planned_types, sharding_plan, sharding_types, topology
from tests.train.test_distributed import one_step
from tests.train.worlds import synthetic_world

BIG_USERS = 5_000  # the user table: 5,001 x 32 weights + Adagrad state, 1.3 MB


def meta_task(n_users: int = BIG_USERS, n_items: int = 300) -> TwoTowerTrainTask:
    enc = FeatureEncoder(user_ids=tuple(range(n_users)), item_ids=tuple(range(n_items)), genders=("F",),
                         occupations=("x",), genres=("Drama",))
    return TwoTowerTrainTask(build_two_tower(enc, 32, "meta"))


class TestShardingTypes:
    def test_a_table_above_the_limit_is_split_and_the_rest_stay_table_wise(self):
        tables = [TableSize("t_user_id", 10**8, 64), TableSize("t_item_id", 10**4, 64)]
        assert sharding_types(tables, 1024**3, "cuda") == {"t_user_id": "row_wise", "t_item_id": "table_wise"}
        assert sharding_types(tables, 1024**3, "cpu") == {"t_user_id": "column_wise", "t_item_id": "table_wise"}

    def test_the_size_counts_the_optimizer_state(self):
        assert TableSize("t", 1000, 32, "adagrad").bytes == 1000 * 65 * 4
        assert TableSize("t", 1000, 32, "rowwise_adagrad").bytes == 1000 * 33 * 4
        assert sharding_types([TableSize("t", 1000, 32, "adagrad")], 1000 * 50 * 4, "cuda") == {"t": "row_wise"}
        assert sharding_types([TableSize("t", 1000, 32, "rowwise_adagrad")], 1000 * 50 * 4, "cuda") == {"t": "table_wise"}

    def test_without_a_limit_half_a_device_is_the_limit(self):
        gpu = topology(2, "cuda")
        assert device_limit(gpu, None) == gpu.devices[0].storage.hbm / 2
        assert device_limit(gpu, 3.0) == 3 * 1024**2


class TestPlanner:
    """TorchRec's own planner, called without a process group (a planner-only call for a 2-GPU world)."""

    def test_the_big_table_is_row_wise_over_both_ranks_and_the_small_ones_keep_table_wise(self):
        task = meta_task()
        plan = sharding_plan(task, task.model, "cuda", world_size=2, limit_mb=1.0)
        types = planned_types(plan)
        assert types.pop("t_user_id") == "row_wise"
        assert set(types.values()) == {"table_wise"}
        user = plan.plan["model.user_ebc"]["t_user_id"]
        assert {str(s.placement) for s in user.sharding_spec.shards} == {"rank:0/cuda:0", "rank:1/cuda:1"}
        assert {str(ps.compute_kernel) for m in plan.plan.values() for ps in m.values()} == {"fused"}

    def test_tables_that_fit_a_device_keep_todays_plan(self):
        task = meta_task()
        for device_type in ("cuda", "cpu"):
            plan = sharding_plan(task, task.model, device_type, world_size=2)
            assert set(planned_types(plan).values()) == {"table_wise"}

    def test_on_cpu_a_big_table_is_split_by_columns(self):
        task = meta_task()
        assert planned_types(sharding_plan(task, task.model, "cpu", world_size=2, limit_mb=1.0))["t_user_id"] == "column_wise"


def test_a_column_wise_table_trains_on_cpu():
    """The CPU split is a working plan: the fused optimizer moves the split table's rows."""
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    init_process_group()
    dmp = shard(TwoTowerTrainTask(build_two_tower(encoder, 8, "meta")), 0.1, torch.device("cpu"), row_wise_above_mb=1e-4)
    types = planned_types(dmp.plan)
    assert "column_wise" in types.values()
    split = next(name for name, kind in types.items() if kind == "column_wise")
    key = next(k for k in dmp.state_dict() if k.endswith(f"{split}.weight"))
    before = torch.cat([s.tensor.detach().clone() for s in dmp.state_dict()[key].local_shards()], dim=1)
    one_step(dmp, optimizer(dmp, 0.01), encoder, history, catalogue)
    after = torch.cat([s.tensor.detach() for s in dmp.state_dict()[key].local_shards()], dim=1)
    assert not torch.allclose(before, after)


def test_a_split_table_loads_and_gathers_whole():
    """A warm start writes a plain tower into the split shards, and the gathered Recommender reads it back."""
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    init_process_group()
    dmp = shard(TwoTowerTrainTask(build_two_tower(encoder, 8, "meta")), 0.1, torch.device("cpu"), row_wise_above_mb=1e-4)
    torch.manual_seed(1)
    plain = build_two_tower(encoder, 8)
    load_tower(dmp, plain)
    gathered = unsharded(dmp, encoder, catalogue, np.zeros(len(catalogue)), 8).model
    for name, value in plain.state_dict().items():
        assert torch.equal(gathered.state_dict()[name], value), name

