"""Fault: the training process is killed mid-epoch; the task's retry resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.distributed import init_process_group
from tests.faults.conftest import copy_cycle, finish, report, tiny_settings, train_task, wait_for

EPOCHS = 3


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(path)).model.state_dict()


@pytest.mark.slow
def test_killed_mid_epoch_then_retried_matches_an_uninterrupted_run(pulled_template, tmp_path, record_property):
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", train={"epochs": EPOCHS, "embedding_dim": 8,
                                                                             "batch_size": 256})
    baseline_run, killed_run = copy_cycle(pulled_template, tmp_path / "a"), copy_cycle(pulled_template, tmp_path / "b")
    baseline = train_task(baseline_run, settings)

    task = train_task(killed_run, settings)
    model_dir = Path(killed_run["run_dir"]) / "model"
    checkpoint = model_dir / "checkpoints" / "last.rank0.pt"
    wait_for(checkpoint, task)
    task.send_signal(signal.SIGKILL)  # mid-way through epoch 2: no chance to clean up
    code, _, _ = finish(task)
    assert code == -signal.SIGKILL
    assert checkpoint.exists() and not (model_dir / "model.pt").exists()  # killed before the end
    init_process_group()  # the epoch checkpoint holds sharded tensors
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)  # nosec B614  # the trainer's own file
    assert saved["epoch"] == 0 and len(saved["losses"]) == 1

    retry_code, resumed, log = finish(train_task(killed_run, settings))  # the task's retry: same folder
    base_code, expected, base_log = finish(baseline)
    assert base_code == 0, base_log[-3000:]
    assert retry_code == 0, log[-3000:]
    assert "resumed after epoch 1" in log

    assert resumed["n_steps"] == expected["n_steps"] and len(resumed["epoch_losses"]) == EPOCHS
    assert resumed["epoch_losses"] == pytest.approx(expected["epoch_losses"], rel=1e-5)
    assert resumed["epoch_losses"][0] == pytest.approx(saved["losses"][0], rel=1e-9)  # epoch 1 was not redone
    a, b = weights(resumed["checkpoint"]), weights(expected["checkpoint"])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not checkpoint.exists()  # the final model superseded the resume point

    report(record_property, data_lost_rows=expected["n_samples"] - resumed["n_samples"],
           bad_promotions=0 if resumed["epoch_losses"] else 1)
