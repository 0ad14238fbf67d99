"""Training speed: the pipeline's loop against a bare TorchRec loop of the same model.

The bare loop feeds pre-built batches straight into the sharded model, so the ratio
shows what the pipeline's own batching (history gathering, KJT building, catalogue
snapshots) costs. Also times a full retrain and scoring every user against every item.
Writes bench/results/train_speed.json (``--out`` for another folder). ``--smoke``: the same
path on the oldest ``SMOKE_ROWS`` interactions, one epoch and a few bare-loop batches, written
to ``--out`` or a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quality import frames  # bench/quality.py: run as a script, this file's folder is on sys.path

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.distributed import init_process_group, optimizer, shard
from recsys_retrain.train.examples import catalogue_snapshots, training_examples
from recsys_retrain.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_ROWS = 20_000


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


def main(smoke: bool = False) -> dict:
    inter, catalogue = frames()
    if smoke:
        inter = inter.iloc[:SMOKE_ROWS]  # the oldest interactions: every user and item id still known to the catalogue
    settings = TrainSettings(epochs=1) if smoke else TrainSettings()
    bare = bare_loop_samples_per_s(inter, catalogue, settings, n_batches=5 if smoke else 60)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest run of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for train_speed.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-train-speed-")) if args.smoke else RESULTS)
    out = main(args.smoke)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_speed.json").write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
