"""Quality benchmark: the two-tower model against most-popular, recent popularity and EASE, same harness.

Protocol (MovieLens-100K): every rating is an interaction; a global temporal split
puts timestamps up to the 80% quantile in training and later interactions in the
test set. The test set keeps every user, cold ones (no training interaction) included,
as the promotion gate scores every user of its window; it keeps only items seen in
training (``test_rows_unseen_items`` counts the rest): an item without a training
interaction has no count for popularity, recent popularity or EASE to rank it by (they
all score it 0), so no baseline could ever rank it. A validation window is carved
from the end of the training period the same way, to choose EASE's lambda, the
recent-popularity window (``RECENT_DAYS``), the model's epoch budget and the model's
serving blend with recent popularity (``recsys_retrain.train.blend``, fit on the
validation window inside ``train``, as the cycle fits it on its schedule split; the
final models, trained on the whole training period, serve at the blend of the chosen
epoch budget). Full ranking over the whole catalogue with each user's training items
excluded.

Per-user NDCG@10 of every method on the same test users; the model's per user is the
mean over its seeds. ``ci95_vs_*`` is the paired bootstrap (users resampled, seeded,
``RESAMPLES`` draws; ``recsys_retrain.gate.paired_bootstrap``, the gate's own) 95%
percentile interval of the mean of model minus baseline. ``goals`` compares point
estimates; ``verdicts`` says "within noise" where the point estimate misses by less
than the interval's half-width. Writes bench/results/quality.json (``--out`` for
another folder).

    .venv/bin/python bench/quality.py [EPOCHS ...] [--smoke] [--out DIR]

``--smoke``: the same path on one epoch budget, two EASE lambdas, two recent windows,
one seed and 1,000 resamples (the numbers mean nothing; it checks the script runs end
to end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain.baselines import EASE, MostPopular, RecentPopular
from recsys_retrain.data.load import load_movielens
from recsys_retrain.evaluate import UserEval, user_metrics
from recsys_retrain.gate import paired_bootstrap
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
EASE_LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
RECENT_DAYS = (7, 14, 28, 56)
SEEDS = (0, 1, 2)
RESAMPLES = 10_000
K = 10
SMOKE = {"epochs": [1], "lambdas": (100.0, 400.0), "recent_days": (14, 28), "seeds": (0,), "resamples": 1_000}


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions with user profile columns, and the item catalogue, as the data stage names them."""
    raw = load_movielens(Settings().cache_dir)
    users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    items = raw.items.rename(columns={"genres": "item_genres", "release_year": "item_release_year"})
    inter = raw.interactions.merge(users, on="user_id", how="left").sort_values("timestamp", kind="stable")
    return inter.reset_index(drop=True), items[["item_id", "item_genres", "item_release_year"]]


def temporal_split(inter: pd.DataFrame, quantile: float, *, cold_users: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions up to the ``quantile`` of timestamps, and the later ones of items seen before the cut.

    The later part keeps only users seen before the cut too (warm users), unless
    ``cold_users``: then every user stays, as the gate scores a window.
    """
    cut = inter["timestamp"].quantile(quantile)
    train_part, later = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    keep = later["item_id"].isin(train_part["item_id"])
    if not cold_users:
        keep &= later["user_id"].isin(train_part["user_id"])
    return train_part, later[keep]


def verdict(mean: float, low: float, high: float) -> str:
    """Model minus baseline in words: ahead or behind, and whether the miss is within the interval's half-width.

    Example:
        >>> verdict(-0.01, -0.04, 0.02)
        'model behind by 0.0100, within noise (95% CI half-width 0.0300)'
    """
    half = (high - low) / 2
    side = "ahead" if mean > 0 else "behind"
    if abs(mean) < half:
        return f"model {side} by {abs(mean):.4f}, within noise (95% CI half-width {half:.4f})"
    return f"model {'beats' if mean > 0 else 'loses to'} the baseline by {abs(mean):.4f} (95% CI half-width {half:.4f})"


def same_users(evals: dict[str, UserEval]) -> np.ndarray:
    """The test users every method was scored on; raises if any method saw other users (a paired test needs the same)."""
    first = next(iter(evals.values()))
    for name, ev in evals.items():
        if not np.array_equal(ev.user_ids, first.user_ids):
            raise ValueError(f"{name} was scored on other test users than the rest; the paired bootstrap needs the same")
    return first.user_ids


def main(
    epochs: list[int],
    lambdas: tuple[float, ...] = EASE_LAMBDAS,
    seeds: tuple[int, ...] = SEEDS,
    recent_days: tuple[int, ...] = RECENT_DAYS,
    resamples: int = RESAMPLES,
) -> dict:
    inter, catalogue = frames()
    train_all, test = temporal_split(inter, 0.8, cold_users=True)
    fit, val = temporal_split(train_all, 0.875, cold_users=True)
    later = inter.loc[inter["timestamp"] > train_all["timestamp"].max(), "item_id"]
    unseen_items = int((~later.isin(train_all["item_id"])).sum())
    print(f"train {len(train_all)}  test {len(test)} (+{unseen_items} rows of items unseen in training, not rankable)  "
          f"fit {len(fit)}  val {len(val)}")

    def val_ndcg(model) -> float:
        return user_metrics(model, fit, val, K).mean_ndcg

    ease_val = {lam: val_ndcg(EASE(fit, catalogue, lam)) for lam in lambdas}
    lam = max(ease_val, key=ease_val.get)
    print("EASE validation NDCG@10 by lambda:", {k: round(v, 4) for k, v in ease_val.items()}, "->", lam)
    recent_val = {days: val_ndcg(RecentPopular(fit, catalogue, days)) for days in recent_days}
    days = max(recent_val, key=recent_val.get)
    print("recent popularity validation NDCG@10 by days:", {k: round(v, 4) for k, v in recent_val.items()}, "->", days)

    with tempfile.TemporaryDirectory() as tmp:
        val_by_epochs, blend_by_epochs, blend_val = {}, {}, {}
        for n in epochs:
            r = train(fit, catalogue, Path(tmp) / f"val{n}", TrainSettings(epochs=n), progress=False, blend_holdout=val)
            val_by_epochs[n] = val_ndcg(load_checkpoint(Path(r.checkpoint)))  # at the blend fit on val
            blend_by_epochs[n], blend_val[n] = r.blend, r.blend_ndcg
        best_epochs = max(val_by_epochs, key=val_by_epochs.get)
        blend = blend_by_epochs[best_epochs]
        print("model validation NDCG@10 by epochs:", {k: round(v, 4) for k, v in val_by_epochs.items()}, "->", best_epochs,
              "at blend", blend, "; by blend:", {b: round(v, 4) for b, v in blend_val[best_epochs].items()})

        runs, seconds = {}, []
        for seed in seeds:
            r = train(train_all, catalogue, Path(tmp) / f"s{seed}", TrainSettings(epochs=best_epochs, seed=seed), progress=False)
            model = load_checkpoint(Path(r.checkpoint))
            model.blend = blend
            runs[f"model_seed{seed}"] = user_metrics(model, train_all, test, K)
            seconds.append(r.seconds)

    baselines = {
        "ease": user_metrics(EASE(train_all, catalogue, lam), train_all, test, K),
        "pop": user_metrics(MostPopular(train_all, catalogue), train_all, test, K),
        "recent_pop": user_metrics(RecentPopular(train_all, catalogue, days), train_all, test, K),
    }
    users = same_users({**runs, **baselines})
    is_cold = baselines["ease"].is_cold
    per_user = {"model": np.mean([ev.ndcg for ev in runs.values()], axis=0), **{n: ev.ndcg for n, ev in baselines.items()}}
    recall = {"model": np.mean([ev.recall for ev in runs.values()], axis=0), **{n: ev.recall for n, ev in baselines.items()}}

    result: dict = {
        "ndcg10_model": float(per_user["model"].mean()),
        "ndcg10_model_std": statistics.pstdev(ev.mean_ndcg for ev in runs.values()),
        "ndcg10_model_by_seed": [ev.mean_ndcg for ev in runs.values()],
        "recall10_model": float(recall["model"].mean()),
    }
    for name in baselines:
        result[f"ndcg10_{name}"] = float(per_user[name].mean())
        result[f"recall10_{name}"] = float(recall[name].mean())
    result.update({
        "ease_lambda": lam,
        "recent_pop_days": days,
        "model_epochs": best_epochs,
        "model_blend": blend,
        "validation_ndcg10": {
            "ease_by_lambda": {str(k): v for k, v in ease_val.items()},
            "recent_pop_by_days": {str(k): v for k, v in recent_val.items()},
            "model_by_epochs": {str(k): v for k, v in val_by_epochs.items()},
            "model_blend_by_epochs": {str(k): v for k, v in blend_by_epochs.items()},
            "model_by_blend": blend_val[best_epochs],
        },
        "train_s": statistics.mean(seconds),
        "test_users": len(users),
        "cold_users": int(is_cold.sum()),
        "test_rows": len(test),
        "test_rows_unseen_items": unseen_items,
        "ndcg10_by_segment": {
            segment: {"users": int(mask.sum()), **{name: float(v[mask].mean()) if mask.any() else None for name, v in per_user.items()}}
            for segment, mask in (("warm", ~is_cold), ("cold", is_cold))
        },
    })
    result["model_vs_ease"] = result["ndcg10_model"] / result["ndcg10_ease"]
    result["model_vs_pop"] = result["ndcg10_model"] / result["ndcg10_pop"]
    result["model_vs_recent_pop"] = result["ndcg10_model"] / result["ndcg10_recent_pop"]
    verdicts, goals = {}, {}
    for name in ("ease", "recent_pop", "pop"):
        iv = paired_bootstrap(per_user["model"], per_user[name], resamples, 0, 0.95)
        result[f"model_minus_{name}"] = iv.mean
        result[f"ci95_vs_{name}"] = [iv.low, iv.high]
        verdicts[f"model_vs_{name}"] = verdict(iv.mean, iv.low, iv.high)
        goals[f"ndcg10_model>ndcg10_{name}"] = bool(iv.mean > 0)
    result["goals"] = goals
    result["verdicts"] = verdicts
    result["protocol"] = (
        f"test: interactions after the 80% timestamp quantile on items seen in training, every user (cold included); "
        f"model per user: mean NDCG@{K} over seeds {list(seeds)}; CIs: paired bootstrap over users, {resamples} resamples, seed 0"
    )
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
        out = main(SMOKE["epochs"], SMOKE["lambdas"], SMOKE["seeds"], SMOKE["recent_days"], SMOKE["resamples"])
    else:
        out = main(args.epochs)
    out["bench_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(out, indent=2) + "\n")
    for key, value in out.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
