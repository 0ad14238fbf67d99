"""Training speed: the pipeline's loop against a bare TorchRec loop of the same model.

The bare loop feeds pre-built batches straight into the sharded model, so the ratio
shows what the pipeline's own batching (history gathering, KJT building, catalogue
snapshots) costs. Also times a full retrain and scoring every user against every item.
Writes bench/results/train_speed.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import frames  # noqa: E402

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower  # noqa: E402
from recsys_retrain.settings import TrainSettings  # noqa: E402
from recsys_retrain.train.checkpoints import load_checkpoint  # noqa: E402
from recsys_retrain.train.distributed import init_process_group, optimizer, shard  # noqa: E402
from recsys_retrain.train.examples import catalogue_snapshots, training_examples  # noqa: E402
from recsys_retrain.train.loop import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


def bare_loop_samples_per_s(inter, catalogue, settings: TrainSettings, n_batches: int = 60) -> float:
    """Same sharded model and batch size; batches built before the clock starts."""
    init_process_group()
    catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
    encoder = FeatureEncoder.fit(inter, catalogue)
    examples = training_examples(inter, encoder)
    snapshots = catalogue_snapshots(inter, catalogue, encoder, examples.period)
    rng = np.random.default_rng(0)
    batches = examples.batches(settings.batch_size, rng)[:n_batches]
    prepared = [(*examples.batch(b, encoder), snapshots[int(examples.period[b[0]])]) for b in batches]
    torch.manual_seed(0)
    dmp = shard(TwoTowerTrainTask(build_two_tower(encoder, settings.embedding_dim, "meta")), settings.sparse_lr, torch.device("cpu"))
    opt = optimizer(dmp, settings.dense_lr)
    started, samples = time.perf_counter(), 0
    for users, labels, items in prepared:
        opt.zero_grad()
        loss, _ = dmp(users, items, labels)
        loss.backward()
        opt.step()
        samples += len(labels)
    return samples / (time.perf_counter() - started)


def main() -> dict:
    inter, catalogue = frames()
    settings = TrainSettings()
    bare = bare_loop_samples_per_s(inter, catalogue, settings)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(inter, catalogue, Path(tmp), settings, progress=False)
        recommender = load_checkpoint(Path(result.checkpoint))
    users = inter.drop_duplicates("user_id")
    started = time.perf_counter()
    scores = recommender.score(users, inter)
    score_all_s = time.perf_counter() - started
    pipeline_rate = result.n_samples * settings.epochs / result.loop_seconds
    return {
        "samples_per_s": pipeline_rate,
        "bare_torchrec_samples_per_s": bare,
        "ratio": pipeline_rate / bare,
        "retrain_s": result.seconds,
        "retrain_epochs": settings.epochs,
        "score_all_s": score_all_s,
        "score_matrix": list(scores.shape),
    }


if __name__ == "__main__":
    out = main()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
