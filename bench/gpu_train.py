"""GPU training check: the pipeline's trainer on CUDA (NCCL, fbgemm-gpu, bf16 autocast).

Run by ``bench/gpu_check.sh`` on a machine with one NVIDIA GPU. It imports only the
trainer's modules (no Feast, MLflow or Airflow), reads MovieLens-100K straight from
the recbole wheel it is given, trains on the quality benchmark's temporal split and
prints samples/s and NDCG@10. Falls back to the CPU when no GPU is visible, which is
how it is tested on machines without one.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import torch

from recsys_retrain.evaluate import evaluate
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train

ML = "recbole/dataset_example/ml-100k/ml-100k"


def read_movielens(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions with user profile columns, and the catalogue, from the recbole wheel.

    A reader of its own rather than ``recsys_retrain.data``, whose import needs the data
    stage's libraries (pandera, Feast) that a GPU box is not handed.
    """
    with zipfile.ZipFile(wheel) as z:
        def table(ext: str) -> pd.DataFrame:
            frame = pd.read_csv(io.BytesIO(z.read(f"{ML}.{ext}")), sep="\t")
            return frame.rename(columns=lambda c: c.split(":")[0])

        inter, users, items = table("inter"), table("user"), table("item")
    inter["timestamp"] = pd.to_datetime(inter["timestamp"], unit="s", utc=True)
    users = users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    inter = inter.merge(users, on="user_id").sort_values("timestamp", kind="stable").reset_index(drop=True)
    items = items.assign(
        item_genres=items["class"].fillna("").str.replace(" ", "|"),
        item_release_year=pd.to_numeric(items["release_year"], errors="coerce").fillna(0).astype(int),
    )
    return inter, items[["item_id", "item_genres", "item_release_year"]]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the recbole-1.2.1 wheel")
    parser.add_argument("--epochs", type=int, default=16, help="training epochs")
    args = parser.parse_args()
    inter, catalogue = read_movielens(args.data)
    cut = inter["timestamp"].quantile(0.8)
    history, later = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    test = later[later["user_id"].isin(history["user_id"]) & later["item_id"].isin(history["item_id"])]
    with tempfile.TemporaryDirectory() as tmp:
        result = train(history, catalogue, Path(tmp), TrainSettings(epochs=args.epochs), progress=False)
        started = time.perf_counter()
        quality = evaluate(load_checkpoint(Path(result.checkpoint)), history, test)
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "samples_per_s": result.n_samples * args.epochs / result.loop_seconds,
        "retrain_s": result.seconds,
        "ndcg10": quality.ndcg,
        "recall10": quality.recall,
        "eval_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
