"""Element-wise against row-wise Adagrad for the embedding tables, on the quality benchmark's split.

TorchRec maps ``torch.optim.Adagrad`` to EXACT_ADAGRAD (one accumulator per element)
and ``torchrec.optim.RowWiseAdagrad`` to EXACT_ROWWISE_ADAGRAD (one per row, 1/dim of
the state), the recommender default. Both train the same model with the same rate,
epochs and seeds; test NDCG@10 is compared user by user (per-user means over seeds),
with a paired bootstrap 95% CI of row-wise minus element-wise. Writes
``bench/results/sparse_optimizer.json`` (``--out`` elsewhere); ``--smoke`` runs one seed
and two epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the quality benchmark's split, beside this script
from quality import frames, temporal_split  # noqa: E402

from recsys_retrain.evaluate import user_metrics  # noqa: E402
from recsys_retrain.gate import paired_bootstrap  # noqa: E402
from recsys_retrain.settings import TrainSettings  # noqa: E402
from recsys_retrain.train.checkpoints import load_checkpoint  # noqa: E402
from recsys_retrain.train.loop import train  # noqa: E402

OPTIMIZERS = ("adagrad", "rowwise_adagrad")


def run(seeds: list[int], epochs: int) -> dict:
    inter, catalogue = frames()
    train_all, test = temporal_split(inter, 0.8)
    per_user: dict[str, list[np.ndarray]] = {name: [] for name in OPTIMIZERS}
    seconds: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    users = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name in OPTIMIZERS:
                settings = TrainSettings(epochs=epochs, seed=seed, sparse_optimizer=name)
                r = train(train_all, catalogue, Path(tmp) / f"{name}{seed}", settings, progress=False)
                scores = user_metrics(load_checkpoint(Path(r.checkpoint)), train_all, test, 10)
                users = scores.user_ids if users is None else users
                if not np.array_equal(users, scores.user_ids):
                    raise RuntimeError("the two optimizers were scored on different test users")
                per_user[name].append(scores.ndcg)
                seconds[name].append(r.seconds)
                print(f"seed {seed} {name:>16}: NDCG@10 {scores.mean_ndcg:.4f} in {r.seconds:.1f} s", flush=True)
    mean = {name: np.mean(per_user[name], axis=0) for name in OPTIMIZERS}  # per user, over seeds
    iv = paired_bootstrap(mean["rowwise_adagrad"], mean["adagrad"], 2000, 0, 0.95)
    dim = TrainSettings().embedding_dim
    return {
        "seeds": seeds,
        "epochs": epochs,
        "test_users": int(len(users)),
        **{f"ndcg10_{name}": float(mean[name].mean()) for name in OPTIMIZERS},
        **{f"ndcg10_{name}_by_seed": [float(v.mean()) for v in per_user[name]] for name in OPTIMIZERS},
        "rowwise_minus_exact": iv.mean,
        "ci95": [iv.low, iv.high],
        **{f"train_s_{name}": float(np.mean(seconds[name])) for name in OPTIMIZERS},
        "state_floats_per_row": {"adagrad": dim, "rowwise_adagrad": 1},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=16, help="training epochs (the quality benchmark's budget)")
    parser.add_argument("--smoke", action="store_true", help="one seed, two epochs: the code path only")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for sparse_optimizer.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = run([0] if args.smoke else list(range(args.seeds)), 2 if args.smoke else args.epochs)
    out["bench_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparse_optimizer.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_by_seed")}, indent=1))


if __name__ == "__main__":
    main()
