"""Quality benchmark: the two-tower model against most-popular and EASE, same harness.

Protocol (MovieLens-100K): every rating is an interaction; a global temporal split
puts timestamps up to the 80% quantile in training and later interactions of users
and items seen in training in the test set; a validation window is carved from the
end of the training period (to tune EASE's lambda and the model's epoch budget);
full ranking over the whole catalogue with each user's training items excluded.
Writes bench/results/quality.json (``--out`` for another folder).

    .venv/bin/python bench/quality.py [EPOCHS ...] [--smoke] [--out DIR]

``--smoke``: the same path on one epoch budget, two EASE lambdas and one seed (the
numbers mean nothing; it checks the script runs end to end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from recsys_retrain.baselines import EASE, MostPopular
from recsys_retrain.data.load import load_movielens
from recsys_retrain.evaluate import evaluate
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
EASE_LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
SEEDS = (0, 1, 2)
SMOKE = {"epochs": [1], "lambdas": (100.0, 400.0), "seeds": (0,)}


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions with user profile columns, and the item catalogue, as the data stage names them."""
    raw = load_movielens(Settings().cache_dir)
    users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    items = raw.items.rename(columns={"genres": "item_genres", "release_year": "item_release_year"})
    inter = raw.interactions.merge(users, on="user_id", how="left").sort_values("timestamp", kind="stable")
    return inter.reset_index(drop=True), items[["item_id", "item_genres", "item_release_year"]]


def temporal_split(inter: pd.DataFrame, quantile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = inter["timestamp"].quantile(quantile)
    train_part, later = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    later = later[later["user_id"].isin(train_part["user_id"]) & later["item_id"].isin(train_part["item_id"])]
    return train_part, later


def main(epochs: list[int], lambdas: tuple[float, ...] = EASE_LAMBDAS, seeds: tuple[int, ...] = SEEDS) -> dict:
    inter, catalogue = frames()
    train_all, test = temporal_split(inter, 0.8)
    fit, val = temporal_split(train_all, 0.875)
    print(f"train {len(train_all)}  test {len(test)}  fit {len(fit)}  val {len(val)}")

    ease_val = {lam: evaluate(EASE(fit, catalogue, lam), fit, val).ndcg for lam in lambdas}
    lam = max(ease_val, key=ease_val.get)
    print("EASE validation NDCG@10 by lambda:", {k: round(v, 4) for k, v in ease_val.items()}, "->", lam)

    with tempfile.TemporaryDirectory() as tmp:
        val_by_epochs = {}
        for n in epochs:
            r = train(fit, catalogue, Path(tmp) / f"val{n}", TrainSettings(epochs=n), progress=False)
            from recsys_retrain.train.checkpoints import load_checkpoint

            val_by_epochs[n] = evaluate(load_checkpoint(Path(r.checkpoint)), fit, val).ndcg
        best_epochs = max(val_by_epochs, key=val_by_epochs.get)
        print("model validation NDCG@10 by epochs:", {k: round(v, 4) for k, v in val_by_epochs.items()}, "->", best_epochs)

        runs, seconds = [], []
        for seed in seeds:
            r = train(train_all, catalogue, Path(tmp) / f"s{seed}", TrainSettings(epochs=best_epochs, seed=seed), progress=False)
            from recsys_retrain.train.checkpoints import load_checkpoint

            runs.append(evaluate(load_checkpoint(Path(r.checkpoint)), train_all, test))
            seconds.append(r.seconds)

    ease = evaluate(EASE(train_all, catalogue, lam), train_all, test)
    pop = evaluate(MostPopular(train_all, catalogue), train_all, test)
    result = {
        "ndcg10_model": statistics.mean(r.ndcg for r in runs),
        "ndcg10_model_std": statistics.pstdev(r.ndcg for r in runs),
        "recall10_model": statistics.mean(r.recall for r in runs),
        "ndcg10_ease": ease.ndcg,
        "recall10_ease": ease.recall,
        "ndcg10_pop": pop.ndcg,
        "recall10_pop": pop.recall,
        "ease_lambda": lam,
        "model_epochs": best_epochs,
        "train_s": statistics.mean(seconds),
        "test_users": runs[0].n_users,
    }
    result["model_vs_ease"] = result["ndcg10_model"] / result["ndcg10_ease"]
    result["model_vs_pop"] = result["ndcg10_model"] / result["ndcg10_pop"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs", type=int, nargs="*", default=[4, 8, 16], help="epoch budgets to validate")
    parser.add_argument("--smoke", action="store_true", help="smallest run of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for quality.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-quality-")) if args.smoke else RESULTS)
    started = time.perf_counter()
    if args.smoke:
        out = main(SMOKE["epochs"], SMOKE["lambdas"], SMOKE["seeds"])
    else:
        out = main(args.epochs)
    out["bench_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
