"""The sharded model: the fused optimizer owns the embedding tables and its rate reaches the kernel."""

from __future__ import annotations

import numpy as np
import torch

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.train.distributed import init_process_group, optimizer, shard
from recsys_retrain.train.examples import training_examples
from tests.train.worlds import synthetic_world


def sharded_task(encoder, lr=0.1):
    init_process_group()
    task = TwoTowerTrainTask(build_two_tower(encoder, 8, "meta"))
    dmp = shard(task, lr, torch.device("cpu"))
    return dmp, optimizer(dmp, 0.01)


def item_table(dmp) -> torch.Tensor:
    key = next(k for k in dmp.state_dict() if k.endswith("t_item_id.weight"))
    tensor = dmp.state_dict()[key]
    return (tensor.local_shards()[0].tensor if hasattr(tensor, "local_shards") else tensor).detach().clone()


def one_step(dmp, opt, encoder, history, catalogue):
    examples = training_examples(history, encoder)
    users, labels = examples.batch(np.arange(len(examples)), encoder)
    opt.zero_grad()
    loss, _ = dmp(users, encoder.item_kjt(catalogue), labels)
    loss.backward()
    opt.step()


def test_fused_optimizer_owns_the_embedding_tables():
    history, catalogue = synthetic_world()
    dmp, _ = sharded_task(FeatureEncoder.fit(history, catalogue))
    assert len(dmp.fused_optimizer.param_groups) > 0
    kernels = {str(s.compute_kernel) for plan in dmp.plan.plan.values() for s in plan.values()}
    assert kernels == {"fused"}


def test_embeddings_move_and_a_larger_rate_moves_them_more():
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    dmp, opt = sharded_task(encoder)
    before = item_table(dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    small = (item_table(dmp) - before).norm()
    assert small > 0, "embedding rows did not move"

    for group in dmp.fused_optimizer.param_groups:
        group["lr"] *= 10
    before = item_table(dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    large = (item_table(dmp) - before).norm()
    assert large > 3 * small, f"update {large:.4g} did not grow with the rate (was {small:.4g})"


def accumulator(dmp) -> torch.Tensor:
    state = dmp.fused_optimizer.state_dict()["state"]
    key = next(k for k in state if k.endswith("t_item_id.weight"))
    (value,) = state[key].values()
    return value.local_shards()[0].tensor if hasattr(value, "local_shards") else value


def test_the_sparse_optimizer_setting_picks_element_or_row_wise_adagrad_and_both_train():
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    init_process_group()
    shapes = {}
    for name in ("adagrad", "rowwise_adagrad"):
        dmp = shard(TwoTowerTrainTask(build_two_tower(encoder, 8, "meta")), 0.1, torch.device("cpu"), name)
        opt = optimizer(dmp, 0.01)
        before = item_table(dmp)
        one_step(dmp, opt, encoder, history, catalogue)
        assert (item_table(dmp) - before).norm() > 0, f"{name}: embedding rows did not move"
        shapes[name] = tuple(accumulator(dmp).shape)
    rows = item_table(dmp).shape[0]
    assert shapes == {"adagrad": (rows, 8), "rowwise_adagrad": (rows,)}  # one accumulator per element, per row
