"""The torchrun worker with two CPU processes (gloo) learns what one process learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_retrain.evaluate import evaluate
from recsys_retrain.train.checkpoints import load_checkpoint
from tests.train.worlds import synthetic_world


def launch(tmp_path: Path, nproc: int, history: Path, catalogue: Path) -> dict:
    out = tmp_path / f"out{nproc}"
    env = {**os.environ, "RETRAIN_TRAIN__EPOCHS": "8", "RETRAIN_TRAIN__EMBEDDING_DIM": "8",
           "RETRAIN_TRAIN__BATCH_SIZE": "32", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "recsys_retrain.train.worker", "--history", str(history), "--catalogue", str(catalogue), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"result": json.loads((out / "train_result.json").read_text()), "model": out / "model.pt"}


@pytest.mark.slow
def test_two_processes_learn_what_one_process_learns(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    history.to_parquet(tmp_path / "history.parquet")
    catalogue.to_parquet(tmp_path / "catalogue.parquet")

    runs = {n: launch(tmp_path, n, tmp_path / "history.parquet", tmp_path / "catalogue.parquet") for n in (1, 2)}
    ndcg = {n: evaluate(load_checkpoint(r["model"]), history, holdout, k=5).ndcg for n, r in runs.items()}
    losses = {n: r["result"]["epoch_losses"] for n, r in runs.items()}

    assert runs[2]["result"]["n_steps"] <= runs[1]["result"]["n_steps"] // 2 + 8  # each rank did half the batches
    assert losses[2][-1] < losses[2][0]
    assert losses[2][-1] == pytest.approx(losses[1][-1], rel=0.15)
    assert ndcg[2] == pytest.approx(ndcg[1], abs=0.1)
    assert ndcg[2] > 0.1  # random ranking scores about 0.08 here


def test_init_continues_from_a_saved_champion(tmp_path):
    """``--init`` (a warm-start plan under torchrun) trains from the champion: its users keep their rows."""
    import torch

    from recsys_retrain.settings import TrainSettings
    from recsys_retrain.train.loop import train
    from recsys_retrain.train.worker import main

    history, catalogue = synthetic_world()
    tiny = TrainSettings(epochs=1, embedding_dim=8, batch_size=32)
    champion = load_checkpoint(Path(train(history, catalogue, tmp_path / "champion", tiny, progress=False).checkpoint))
    torch.save(champion, tmp_path / "init.pt")
    recent = history[history["user_id"] <= 10]  # a warm update's short span: a quarter of the users
    recent.to_parquet(tmp_path / "recent.parquet")
    catalogue.to_parquet(tmp_path / "catalogue.parquet")
    (tmp_path / "train.json").write_text(tiny.model_dump_json())
    main(["--history", str(tmp_path / "recent.parquet"), "--catalogue", str(tmp_path / "catalogue.parquet"),
          "--out", str(tmp_path / "warm"), "--train-settings", str(tmp_path / "train.json"),
          "--init", str(tmp_path / "init.pt")])
    warm = load_checkpoint(tmp_path / "warm" / "model.pt")
    assert warm.encoder.user_ids == champion.encoder.user_ids  # every champion user, not only the span's ten
