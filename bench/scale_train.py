"""Training at catalogue scale: our training loop against a bare TorchRec loop, on the same batches and tables.

For ``bench/scale.py`` (which calls :func:`ours_and_bare` per size) and, run as a script, on its own at the
synthetic sizes S1 and S2 (``recsys_retrain.synthetic``, history before the last week):

- **ours**: ``TrainLoop.run_steps``, the step path of ``train()``: the examples memory-mapped from the
  run folder (``recsys_retrain.train.example_store``, each step reading its batch's rows), the model and
  combined optimizer of ``sharded_model`` (the plan of ``recsys_retrain.train.sharding``), the full
  softmax up to ``train.sampled_softmax_above`` items and the sampled one with logQ above it (the
  step draws its negatives), the step signals, the dense Adam and the trace. No validation, scheduler
  or checkpoints.
- **bare TorchRec**: the same tables and plan, the same dense towers and item prior (taken from a model
  ``build_two_tower`` builds) in a module with a plain forward (no gradient hooks) and the same loss
  (with the same ``log Q`` correction over the same number of sampled negatives above the threshold),
  DistributedModelParallel with the same fused Adagrad in the backward and plain Adam on the towers.
  Its batches are the same example indices, built into KJTs (and sampled catalogues) before the clock
  starts, as a prefetching data loader would hand them over.

The sides take turns every ``CHUNK_BATCHES`` batches (``bench/train_speed.py``'s schedule), so a change
of load on the shared machine falls on both; ``samples_per_s`` and ``bare_torchrec_samples_per_s`` are
medians over ``REPEATS`` passes. Goal (issue 37): ours >= ``GOAL_RATIO`` x bare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.model import FeatureEncoder, TwoTower, build_two_tower, item_prior
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.distributed import SPARSE_OPTIMIZERS, device, init_process_group, sharded_model
from recsys_retrain.train.example_store import open_examples, write_examples
from recsys_retrain.train.examples import catalogue_snapshots, training_examples
from recsys_retrain.train.loop import TrainLoop
from recsys_retrain.train.sampled import NegativeSampler, subset_kjt
from recsys_retrain.train.sharding import sharding_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file (tests/test_bench_scale_train.py) too
from train_speed import seconds, turns  # noqa: E402  (bench/ is not a package)

GOAL_RATIO = 0.7
WARMUP_BATCHES = 10
REPEATS = 3
CHUNK_BATCHES = 4
BATCHES = {"S1": None, "S2": 200, "S3": 200}  # timed batches per pass: S1 its whole epoch, S2 and S3 the epoch's first 200
EPOCHS = {"S1": 16, "S2": 2, "S3": 1}  # the quality check's: bench/scale.py's
K = 10
RECENT_DAYS = 28
RESAMPLES = 10_000

Batch = tuple[KeyedJaggedTensor, KeyedJaggedTensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


class BareTwoTower(nn.Module):
    """The model's tables, towers and item prior under a plain forward and the (sampled) softmax loss."""

    def __init__(self, tower: TwoTower, temperature: float = 1.0) -> None:
        super().__init__()
        self.user_ebc, self.item_ebc = tower.user_ebc, tower.item_ebc
        self.user_proj, self.item_proj = tower.user_proj, tower.item_proj
        self.prior = tower.prior
        self.temperature = temperature

    def forward(
        self, users: KeyedJaggedTensor, items: KeyedJaggedTensor, prior: torch.Tensor, labels: torch.Tensor,
        log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        user = self.user_proj(self.user_ebc(users).values())
        item = self.item_proj(self.item_ebc(items).values())
        logits = (user @ item.T + (prior.float() * self.prior.weight.float()).sum(dim=-1)) / self.temperature
        return nn.functional.cross_entropy(logits if log_q is None else logits - log_q, labels)


def bare_model(encoder: FeatureEncoder, settings: TrainSettings, dev: torch.device
               ) -> tuple[DistributedModelParallel, torch.optim.Optimizer]:
    """DMP over ``BareTwoTower`` (our plan: the same tables on the same kernel), fused Adagrad, plain Adam."""
    model = BareTwoTower(build_two_tower(encoder, settings.embedding_dim, "meta"), settings.temperature)
    for ebc in (model.user_ebc, model.item_ebc):
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS[settings.sparse_optimizer], ebc.parameters(),
                                    {"lr": settings.sparse_lr})
    plan = sharding_plan(model, model, dev.type, dist.get_world_size(), settings.row_wise_above_mb,
                         settings.sparse_optimizer, pg=dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=dev, plan=plan)
    return dmp, torch.optim.Adam([p for _, p in in_backward_optimizer_filter(dmp.named_parameters())], lr=settings.dense_lr)


def bare_steps(dmp: DistributedModelParallel, adam: torch.optim.Optimizer, batches: list[Batch]) -> None:
    """The bare loop: zero the dense gradients, forward, backward (the tables updated there), Adam step."""
    for users, items, prior, labels, log_q in batches:
        adam.zero_grad()
        dmp(users, items, prior, labels, log_q).backward()
        adam.step()


def ours_and_bare(
    history: pd.DataFrame, catalogue: pd.DataFrame, settings: TrainSettings, out_dir: Path,
    n_batches: int | None = None, warmup: int = WARMUP_BATCHES, repeats: int = REPEATS, chunk: int = CHUNK_BATCHES,
) -> dict:
    """Samples/s of our training steps and of the bare TorchRec loop on the same batches and tables.

    Args:
        history, catalogue: the training interactions (data-stage columns) and the item catalogue.
        settings: model size, batch size, rates, softmax threshold and seed of both sides.
        out_dir: where our side's example store is written.
        n_batches: timed batches per pass (the epoch's first ones); None: the whole epoch.
        warmup: untimed batches each side trains first.
        repeats: timed passes per side; medians are reported.
        chunk: batches a side trains before the other takes its turn.

    Returns:
        ``samples_per_s``, ``bare_torchrec_samples_per_s``, ``ratio`` and how they were measured.
    """
    init_process_group()
    dev = device()
    catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
    encoder = FeatureEncoder.fit(history, catalogue)
    examples = open_examples(write_examples(training_examples(history, encoder), out_dir / "examples"))
    snapshots = {p: s.to(dev) for p, s in catalogue_snapshots(history, catalogue, encoder, examples.period).items()}
    batches = examples.batches(settings.batch_size, np.random.default_rng(settings.seed))
    batches = batches[: warmup + (n_batches or len(batches))]
    sampled = len(catalogue) > settings.sampled_softmax_above

    def sampler() -> NegativeSampler:
        return NegativeSampler(examples.labels, len(catalogue), settings.sampled_negatives, settings.seed)

    torch.manual_seed(settings.seed)
    dmp, opt = sharded_model(encoder, settings, dev)
    loop = TrainLoop(dmp, opt, examples, encoder, catalogue, encoder.recent_counts(history, catalogue), snapshots, dev,
                     np.random.default_rng(settings.seed), settings, out_dir / "run", prior=item_prior(history, catalogue),
                     progress=False, sampler=sampler() if sampled else None)
    torch.manual_seed(settings.seed)
    bare, adam = bare_model(encoder, settings, dev)
    draw = sampler() if sampled else None
    prepared: list[Batch] = []
    for idx in batches:
        users, labels = examples.batch(idx, encoder)
        snap = snapshots[int(examples.period[idx[0]])]
        if draw is None:
            prepared.append((users.to(dev), snap.items, snap.prior, labels.to(dev), None))
            continue
        rows, log_q, target = draw.draw(labels.numpy())
        at = torch.from_numpy(rows).to(dev)
        prepared.append((users.to(dev), subset_kjt(snap.items, rows), snap.prior[at], target.to(dev), log_q.to(dev)))

    sides = (lambda part: loop.run_steps(batches[part]), lambda part: bare_steps(bare, adam, prepared[part]))
    for run in sides:
        run(slice(0, warmup))
    timed = len(batches) - warmup
    samples = sum(len(b) for b in batches[warmup:])
    spent = [[0.0, 0.0] for _ in range(repeats)]
    for repeat in spent:
        for side, part in turns(timed, chunk):
            window = slice(part.start + warmup, part.stop + warmup)
            repeat[side] += seconds(partial(sides[side], window), dev)
    ours = statistics.median(samples / s for s, _ in spent)
    bare_rate = statistics.median(samples / b for _, b in spent)
    return {"samples_per_s": round(ours), "bare_torchrec_samples_per_s": round(bare_rate), "ratio": round(ours / bare_rate, 3),
            "softmax": "sampled (logQ)" if sampled else "full", "items": len(catalogue), "examples": len(examples),
            "timed_batches": timed, "batch_size": settings.batch_size, "repeats": repeats, "device": str(dev),
            "goal": f"ratio >= {GOAL_RATIO}", "met": ours / bare_rate >= GOAL_RATIO}


def served_vs_recent_pop(
    history: pd.DataFrame, holdout: pd.DataFrame, catalogue: pd.DataFrame, settings: Settings, out_dir: Path,
    resamples: int = RESAMPLES,
) -> dict:
    """NDCG@10 of the model the pipeline serves against recent popularity on the same holdout users, with a paired CI.

    The model is the one a cycle serves (static policy): the challenger's towers on the history less its latest
    ``schedule.validation_share`` and the served blend with recent popularity fit on that share
    (``recsys_retrain.challenger.training_inputs``, ``train.blend_holdout``), then refit through the history's
    end as a promotion does (``recsys_retrain.train.refit``, ``train.refit``; the blend kept). Trained on the
    whole history with no blend, as ``bench/scale.py`` did, the towers alone are measured: not what serves.

    Returns:
        ``ndcg10_model`` (the served model), ``ndcg10_gated`` (before the refit), ``ndcg10_recent_pop``,
        ``model_minus_recent_pop`` with its 95% paired bootstrap interval over users
        (``recsys_retrain.gate.paired_bootstrap``), the users and the fitted blend.
    """
    from recsys_retrain.baselines import RecentPopular
    from recsys_retrain.challenger import schedule_split
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.gate import paired_bootstrap
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.loop import train
    from recsys_retrain.train.refit import refit_model

    fit, tail = history, None
    if settings.train.blend_holdout:
        fit, tail = schedule_split(history, settings.schedule.validation_share, cold_users=True)
    trained = train(fit, catalogue, out_dir, settings.train, progress=False, blend_holdout=tail)
    gated = user_metrics(load_checkpoint(Path(trained.checkpoint)), history, holdout, K)
    served, refit = Path(trained.checkpoint), None
    if tail is not None and not tail.empty:
        refit = refit_model(fit, tail, catalogue, served, out_dir / "refit", settings, settings.train.refit)
        served = Path(refit.checkpoint)
    model = user_metrics(load_checkpoint(served), history, holdout, K)
    recent = user_metrics(RecentPopular(history, catalogue, RECENT_DAYS), history, holdout, K)
    if not np.array_equal(model.user_ids, recent.user_ids):
        raise RuntimeError("the model and recent popularity were scored on different users: no paired comparison")
    iv = paired_bootstrap(model.ndcg, recent.ndcg, resamples, 0, 0.95)
    return {"ndcg10_model": round(model.mean_ndcg, 4), "ndcg10_gated": round(gated.mean_ndcg, 4),
            "refit": refit.mode if refit is not None else "none", "ndcg10_recent_pop": round(recent.mean_ndcg, 4),
            "model_minus_recent_pop": round(iv.mean, 4), "ci95": [round(iv.low, 4), round(iv.high, 4)],
            "users": model.n_users, "cold_users": int(model.is_cold.sum()), "blend": trained.blend,
            "epochs": settings.train.epochs, "train_s": round(trained.seconds, 1)}


class TasteFromHistory:
    """The generator's own choice model with each user's taste estimated from their history: a ceiling for a model.

    ``P(i | u, day) = s * theta_u[c(i)] * w_i / W_c(i) + (1 - s) * w_i / W`` with the true item weights
    ``w`` on the day (base weight, ageing, drift boosts; ``latent.npz``, ``truth.json``), the taste share
    ``s``, and ``theta_u`` the Dirichlet mean of the clusters of ``u``'s earlier items (a cold user: uniform,
    so popularity). Only the users' tastes are estimated, from the data a model sees; the rest is the truth.

    Args:
        folder: the synthetic log's folder.
        catalogue: the items (``item_id``).
        day: the log day the scores are for (the holdout's first).
    """

    def __init__(self, folder: Path, catalogue: pd.DataFrame, day: int) -> None:
        latent = np.load(folder / "latent.npz")
        truth = json.loads((folder / "truth.json").read_text())
        self.config = truth["config"]
        self.catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
        weight = latent["item_weight"].copy()
        head = np.quantile(latent["item_weight"], 0.995)
        for drift in truth["drifts"]:
            if "items" in drift and drift["day"] <= day:
                weight[np.asarray(drift["items"]) - 1] = head
        age = day - latent["item_arrival"]
        floor, days = self.config["ageing_floor"], self.config["ageing_days"]
        self.weight = np.where(age >= 0, weight * (floor + (1 - floor) * np.exp(-np.clip(age, 0, None) / days)), 0.0)
        self.cluster = latent["item_cluster"]
        self.mass = np.bincount(self.cluster, weights=self.weight, minlength=self.config["clusters"])
        self.rows = self.catalogue["item_id"].to_numpy() - 1  # catalogue row -> generator item

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        ids = users["user_id"].to_numpy()
        counts = np.zeros((len(ids), self.config["clusters"]))
        if history is not None:
            seen = history[history["user_id"].isin(ids)]
            np.add.at(counts, (pd.Index(ids).get_indexer(seen["user_id"]), self.cluster[seen["item_id"].to_numpy() - 1]), 1.0)
        taste = counts + self.config["taste_concentration"]
        taste /= taste.sum(axis=1, keepdims=True)
        share, c, w = self.config["taste_share"], self.cluster[self.rows], self.weight[self.rows]
        p = share * taste[:, c] * (w / np.maximum(self.mass[c], 1e-12)) + (1 - share) * w / self.weight.sum()
        return torch.from_numpy(p)


def taste_ceiling(folder: Path, history: pd.DataFrame, holdout: pd.DataFrame, catalogue: pd.DataFrame,
                  resamples: int = RESAMPLES) -> dict:
    """NDCG@10 of ``TasteFromHistory`` against recent popularity on the holdout's users, with a paired CI."""
    from recsys_retrain.baselines import RecentPopular
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.gate import paired_bootstrap

    start = pd.Timestamp(json.loads((folder / "truth.json").read_text())["config"]["start"], tz="UTC")
    day = int((holdout["timestamp"].min() - start) / pd.Timedelta(days=1))
    best = user_metrics(TasteFromHistory(folder, catalogue, day), history, holdout, K)
    recent = user_metrics(RecentPopular(history, catalogue, RECENT_DAYS), history, holdout, K)
    iv = paired_bootstrap(best.ndcg, recent.ndcg, resamples, 0, 0.95)
    return {"ndcg10_taste_from_history": round(best.mean_ndcg, 4), "ndcg10_recent_pop": round(recent.mean_ndcg, 4),
            "minus_recent_pop": round(iv.mean, 4), "ci95": [round(iv.low, 4), round(iv.high, 4)], "users": best.n_users,
            "cold_users": int(best.is_cold.sum()),
            "minus_recent_pop_warm": round(float((best.ndcg - recent.ndcg)[~best.is_cold].mean()), 4),
            "minus_recent_pop_cold": round(float((best.ndcg - recent.ndcg)[best.is_cold].mean()), 4)}


def synthetic_frames(size: str, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """History, last week and catalogue of a synthetic size (``bench/scale.py``'s config and split)."""
    from scale import config_for, synthetic_split

    return synthetic_split(config_for(size), folder, holdout_days=7)


def main(sizes: tuple[str, ...] = ("S1", "S2"), smoke: bool = False, quality: bool = False, speed: bool = True) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            history, holdout, items = synthetic_frames(size, Path(tmp) / size / "log")
            if smoke:
                history = history.iloc[:20_000]
            out[size] = {}
            if speed:
                shape = {"n_batches": 8, "warmup": 2, "repeats": 1} if smoke else {"n_batches": BATCHES[size]}
                r = out[size] = ours_and_bare(history, items, TrainSettings(), Path(tmp) / size, **shape)
                print(f"[{size}] samples_per_s {r['samples_per_s']}  bare_torchrec_samples_per_s "
                      f"{r['bare_torchrec_samples_per_s']}  ratio {r['ratio']} ({r['softmax']} softmax, "
                      f"{r['items']} items, {r['timed_batches']} batches)", flush=True)
            if quality:
                c = out[size]["ceiling"] = taste_ceiling(Path(tmp) / size / "log", history, holdout, items)
                print(f"[{size}] ceiling (the generator's model, tastes from history) {c['ndcg10_taste_from_history']} "
                      f"recent pop {c['ndcg10_recent_pop']}: {c['minus_recent_pop']:+.4f} (95% CI {c['ci95'][0]:+.4f}, "
                      f"{c['ci95'][1]:+.4f}) on {c['users']} users", flush=True)
                epochs = 1 if smoke else EPOCHS[size]
                settings = Settings(train={"epochs": epochs})
                q = out[size]["quality"] = served_vs_recent_pop(history, holdout, items, settings, Path(tmp) / size / "q")
                print(f"[{size}] NDCG@10 model {q['ndcg10_model']} recent pop {q['ndcg10_recent_pop']}: "
                      f"{q['model_minus_recent_pop']:+.4f} (95% CI {q['ci95'][0]:+.4f}, {q['ci95'][1]:+.4f}) on {q['users']} "
                      f"users ({q['cold_users']} cold), blend {q['blend']}, {epochs} epochs, refit {q['refit']} "
                      f"(before it {q['ndcg10_gated']})", flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S1,S2", help="comma-separated synthetic sizes (recsys_retrain.synthetic.SIZES)")
    parser.add_argument("--smoke", action="store_true", help="a few batches of each size's first 20,000 examples")
    parser.add_argument("--quality", action="store_true", help="also the served model and the taste ceiling against recent "
                        "popularity (paired CIs)")
    parser.add_argument("--no-speed", action="store_true", help="skip the loop comparison (with --quality)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    result = main(tuple(args.sizes.split(",")), args.smoke, args.quality, not args.no_speed)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
