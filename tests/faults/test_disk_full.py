"""Fault: the disk fills up while the trainer writes an epoch checkpoint (a size-limited folder).

The run's model folder is a tmpfs mount; after the first epoch checkpoint is written,
the mount is shrunk to what it holds plus half a checkpoint, so the next write runs
out of space mid-file. Where mounting is not permitted, the running task gets a
file-size limit (``prlimit``) below a checkpoint's size instead: the same failed write.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from recsys_retrain.train.distributed import init_process_group
from tests.faults.conftest import copy_cycle, finish, report, tiny_settings, train_task, wait_for


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def used_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def model_dir(pulled_template, tmp_path):
    pulled = copy_cycle(pulled_template, tmp_path / "run")
    folder = Path(pulled["run_dir"]) / "model"
    mounted = mount_tmpfs(folder)
    yield pulled, folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
def test_disk_full_on_checkpoint_write_fails_cleanly_and_keeps_the_previous_checkpoint(
    model_dir, tmp_path, record_property
):
    pulled, folder, mounted = model_dir
    settings = tiny_settings(tmp_path / "home", tmp_path / "features",
                             train={"epochs": 3, "embedding_dim": 8, "batch_size": 256})
    checkpoint = folder / "checkpoints" / "last.rank0.pt"
    task = train_task(pulled, settings)
    wait_for(checkpoint, task)
    task.send_signal(signal.SIGSTOP)  # hold the task while the disk is made full
    size, before = checkpoint.stat().st_size, sha256(checkpoint)
    if mounted:
        limit = used_bytes(folder) + size // 2
        subprocess.run(["mount", "-o", f"remount,size={limit}", str(folder)], check=True, capture_output=True)
    else:
        subprocess.run(["prlimit", f"--pid={task.pid}", f"--fsize={size // 2}"], check=True, capture_output=True)
    task.send_signal(signal.SIGCONT)
    code, _, log = finish(task)

    assert code != 0 and "save_epoch_checkpoint" in log, log[-2000:]  # it failed in the checkpoint write
    assert "could not write the epoch checkpoint" in log and "the previous last.rank0.pt is kept" in log, log[-2000:]
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]  # no partial file left behind (recsys_retrain.io names)
    intact = sha256(checkpoint) == before
    assert intact  # the previous epoch's checkpoint, byte for byte
    init_process_group()  # it holds sharded tensors
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)  # nosec B614  # the trainer's own file
    assert saved["epoch"] == 0 and len(saved["losses"]) == 1
    assert not (folder / "model.pt").exists() and not (folder / "train_result.json").exists()

    if mounted:  # space is back: the task's retry resumes from the kept checkpoint
        subprocess.run(["mount", "-o", "remount,size=256m", str(folder)], check=True, capture_output=True)
    retry_code, result, retry_log = finish(train_task(pulled, settings))
    assert retry_code == 0, retry_log[-3000:]
    assert "resumed after epoch 1" in retry_log and len(result["epoch_losses"]) == 3
    assert result["epoch_losses"][0] == pytest.approx(saved["losses"][0], rel=1e-9)
    report(record_property, data_lost_rows=0 if intact else saved["steps"], bad_promotions=0)
