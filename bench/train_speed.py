"""Training speed: the pipeline's training steps against a bare TorchRec loop, on the same batches.

Both sides train the same batches: one epoch of the pipeline's own draw (``Examples.batches``
with the run's seed) at the settings' batch size, on the device ``train()`` would use, in one process.

- **pipeline**: ``TrainLoop.run_steps`` on the model and combined optimizer that ``sharded_model``
  builds, the step path ``train()`` runs. Each step gathers its examples' histories and builds the
  user KJT from the example indices, runs forward and backward (the fused Adagrad updates the tables
  inside the backward), reads the step signals a scheduler or a callback sees (loss, gradient norms,
  rates), steps the dense Adam through the combined optimizer (which also hands the rate to the fused
  kernel) and records the step in the trace. No validation, no scheduler and no checkpoints:
  ``train()`` writes an epoch checkpoint after every epoch, which is left out here on purpose.
- **bare TorchRec**: the same EmbeddingBagCollection tables, the same dense towers and item prior (taken
  from a model ``build_two_tower`` builds) in a module with a plain forward and the same loss, but none of the
  pipeline's gradient hooks; wrapped in DistributedModelParallel with the same fused Adagrad applied in
  backward (planned table-wise on the fused kernel, as the pipeline plans it) and plain Adam on the
  tower layers. Its batches are the same example indices, built into KJTs on the device before the clock
  starts, as a prefetching data loader would hand them over.

Each side first trains ``WARMUP_BATCHES`` batches untimed (the optimizers' state materialised, the
kernels and the allocator warm). Then each of ``REPEATS`` repeats passes over the epoch's batches once
per side, the two sides taking turns every ``CHUNK_BATCHES`` batches (who goes first flips each turn),
each side's time summed over its turns: a change of load on the machine falls on both sides alike,
where whole passes one after the other can land in different loads. ``samples_per_s`` and
``bare_torchrec_samples_per_s`` are the medians of the repeats, and ``ratio`` (pipeline / bare) says
what the pipeline's per-step batching and bookkeeping cost. Goal: the pipeline keeps at least
``GOAL_RATIO`` of the bare loop's samples/s. Absolute numbers move with the machine's load; the ratio,
measured side by side, is the figure to compare.

Also times a full retrain end to end (``train()``: set-up, the epochs with their epoch checkpoints, the
final model) and scoring every user against every item.

Writes bench/results/train_speed.json (``--out`` for another folder). ``--smoke``: the same path on
the oldest ``SMOKE_ROWS`` interactions, a few batches per side and one retrain epoch, written to
``--out`` or a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_retrain.model import FeatureEncoder, TwoTower, build_two_tower, item_prior
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.distributed import SPARSE_OPTIMIZERS, device, init_process_group, sharded_model
from recsys_retrain.train.examples import catalogue_snapshots, training_examples
from recsys_retrain.train.loop import TrainLoop, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file (tests/test_bench_train_speed.py) too
from quality import frames  # noqa: E402  (bench/ is not a package)

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_ROWS = 20_000
WARMUP_BATCHES = 20
REPEATS = 3
CHUNK_BATCHES = 4  # the sides take turns every 4 batches (some 0.03 s each on a quiet 2-core machine)
SMOKE = {"warmup": 2, "batches": 6}
GOAL_RATIO = 0.9  # the pipeline's per-step batching and signals may cost at most a tenth of the bare loop's rate

Batch = tuple[KeyedJaggedTensor, KeyedJaggedTensor, torch.Tensor, torch.Tensor]  # users, the period's catalogue
# and its item-prior features, labels


class BareTwoTower(nn.Module):
    """The pipeline model's tables, dense towers and item prior under a plain TorchRec forward and the same loss.

    No gradient hooks (the pipeline's ``TwoTower`` watches the pooled embeddings' gradients for its
    step signals): what a hand-written TorchRec training script would train.
    """

    def __init__(self, tower: TwoTower, temperature: float = 1.0) -> None:
        super().__init__()
        self.user_ebc, self.item_ebc = tower.user_ebc, tower.item_ebc
        self.user_proj, self.item_proj = tower.user_proj, tower.item_proj
        self.prior = tower.prior  # its weight only: the forward below is written out
        self.temperature = temperature

    def forward(
        self, users: KeyedJaggedTensor, items: KeyedJaggedTensor, prior: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        user = self.user_proj(self.user_ebc(users).values())
        item = self.item_proj(self.item_ebc(items).values())
        scores = user @ item.T + (prior.float() * self.prior.weight.float()).sum(dim=-1)
        return nn.functional.cross_entropy(scores / self.temperature, labels)


def bare_model(
    encoder: FeatureEncoder, settings: TrainSettings, dev: torch.device
) -> tuple[DistributedModelParallel, torch.optim.Optimizer]:
    """DistributedModelParallel over ``BareTwoTower`` with the fused in-backward Adagrad, and Adam on the towers.

    The tables are planned table-wise on the fused kernel: left to itself the planner makes such small
    tables data-parallel on a dense kernel, where the in-backward optimizer never runs.
    """
    model = BareTwoTower(build_two_tower(encoder, settings.embedding_dim, "meta"), settings.temperature)
    ebcs = (model.user_ebc, model.item_ebc)
    for ebc in ebcs:
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS[settings.sparse_optimizer], ebc.parameters(),
                                    {"lr": settings.sparse_lr})
    constraints = {
        t.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])
        for ebc in ebcs for t in ebc.embedding_bag_configs()
    }
    planner = EmbeddingShardingPlanner(
        topology=TopologyFactory.create_topology(
            trainer_config=TrainerConfig(world_size=dist.get_world_size()),
            kernel_config=KernelConfig(compute_device=dev.type),
        ),
        constraints=constraints,
    )
    plan = planner.collective_plan(model, pg=dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=dev, plan=plan)
    dense = [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
    return dmp, torch.optim.Adam(dense, lr=settings.dense_lr)


def bare_steps(
    dmp: DistributedModelParallel, adam: torch.optim.Optimizer, batches: list[Batch], autocast: bool
) -> None:
    """The bare training loop: zero the dense gradients, forward, backward (tables updated there), Adam step."""
    for users, items, prior, labels in batches:
        adam.zero_grad()
        with torch.autocast(device_type=labels.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = dmp(users, items, prior, labels)
        loss.backward()
        adam.step()


def seconds(run: Callable[[], None], dev: torch.device) -> float:
    """Wall-clock seconds of ``run()``, the device's queue drained on both ends."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    started = time.perf_counter()
    run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - started


def turns(n_batches: int, chunk: int) -> list[tuple[int, slice]]:
    """One repeat's schedule: ``(side, batches)``, the two sides (0, 1) taking turns chunk by chunk.

    Each side gets every chunk once; who goes first flips from chunk to chunk (0 1, 1 0, 0 1, ...),
    so neither side always runs right after the other.

    Example:
        >>> [(side, part.start, part.stop) for side, part in turns(5, 2)]
        [(0, 0, 2), (1, 0, 2), (1, 2, 4), (0, 2, 4), (0, 4, 5), (1, 4, 5)]
    """
    out = []
    for k, start in enumerate(range(0, n_batches, chunk)):
        part = slice(start, min(start + chunk, n_batches))
        out += [(side, part) for side in ((0, 1) if k % 2 == 0 else (1, 0))]
    return out


def side_by_side(
    inter: pd.DataFrame, catalogue: pd.DataFrame, settings: TrainSettings, out_dir: Path,
    warmup: int = WARMUP_BATCHES, n_batches: int | None = None, repeats: int = REPEATS, chunk: int = CHUNK_BATCHES,
) -> dict:
    """Samples/s of the pipeline's steps and of the bare loop on the same batches (see the module docstring).

    Args:
        inter, catalogue: the training interactions and the item catalogue.
        settings: model size, batch size, rates and seed of both sides.
        out_dir: the pipeline loop's run folder (nothing is written there: no checkpoints).
        warmup: untimed batches each side trains first (the first of the timed ones).
        n_batches: timed batches per repeat (the epoch's first ones); None: the whole epoch.
        repeats: timed passes per side; the medians are reported.
        chunk: batches a side trains before the other takes its turn (``turns``).
    """
    init_process_group()
    dev = device()
    autocast = dev.type == "cuda"  # as ``train()`` runs without a ResourceController
    catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
    encoder = FeatureEncoder.fit(inter, catalogue)
    examples = training_examples(inter, encoder)
    snapshots = {p: snap.to(dev) for p, snap in catalogue_snapshots(inter, catalogue, encoder, examples.period).items()}
    batches = examples.batches(settings.batch_size, np.random.default_rng(settings.seed))[:n_batches]
    samples = sum(len(b) for b in batches)

    torch.manual_seed(settings.seed)
    dmp, opt = sharded_model(encoder, settings, dev)
    loop = TrainLoop(dmp, opt, examples, encoder, catalogue, encoder.recent_counts(inter, catalogue), snapshots, dev,
                     np.random.default_rng(settings.seed), settings, out_dir, prior=item_prior(inter, catalogue),
                     progress=False)
    loop.autocast = autocast

    torch.manual_seed(settings.seed)
    bare, adam = bare_model(encoder, settings, dev)
    prepared = []
    for idx in batches:
        users, labels = examples.batch(idx, encoder)
        snap = snapshots[int(examples.period[idx[0]])]
        prepared.append((users.to(dev), snap.items, snap.prior, labels.to(dev)))

    sides = (lambda part: loop.run_steps(batches[part]), lambda part: bare_steps(bare, adam, prepared[part], autocast))
    for run in sides:
        run(slice(0, warmup))
    spent = [[0.0, 0.0] for _ in range(repeats)]  # seconds of each repeat: pipeline, bare
    for repeat in spent:
        for side, part in turns(len(batches), chunk):
            repeat[side] += seconds(lambda: sides[side](part), dev)
    rates = {"pipeline": [samples / s for s, _ in spent], "bare": [samples / s for _, s in spent]}
    pipeline, bare_rate = statistics.median(rates["pipeline"]), statistics.median(rates["bare"])
    return {
        "samples_per_s": pipeline,
        "bare_torchrec_samples_per_s": bare_rate,
        "ratio": pipeline / bare_rate,
        "warmup_batches": warmup,
        "repeats": repeats,
        "chunk_batches": chunk,
        "timed_batches": len(batches),
        "timed_samples": samples,
        "batch_size": settings.batch_size,
        "samples_per_s_runs": rates["pipeline"],
        "bare_torchrec_samples_per_s_runs": rates["bare"],
        "ratio_runs": [a / b for a, b in zip(rates["pipeline"], rates["bare"])],
        "device": str(dev),
    }


def goals(result: dict) -> dict[str, bool]:
    return {f"ratio>={GOAL_RATIO}": result["ratio"] >= GOAL_RATIO}


def main(smoke: bool = False) -> dict:
    inter, catalogue = frames()
    if smoke:
        inter = inter.iloc[:SMOKE_ROWS]  # the oldest interactions: every user and item id still known to the catalogue
    settings = TrainSettings(epochs=1) if smoke else TrainSettings()
    with tempfile.TemporaryDirectory() as tmp:
        shape = {"warmup": SMOKE["warmup"], "n_batches": SMOKE["batches"]} if smoke else {}
        out = side_by_side(inter, catalogue, settings, Path(tmp) / "side_by_side", **shape)
        result = train(inter, catalogue, Path(tmp) / "retrain", settings, progress=False)
        recommender = load_checkpoint(Path(result.checkpoint))
    users = inter.drop_duplicates("user_id")
    started = time.perf_counter()
    scores = recommender.score(users, inter)
    score_all_s = time.perf_counter() - started
    return {
        **out,
        "retrain_s": result.seconds,
        "retrain_epochs": settings.epochs,
        "score_all_s": score_all_s,
        "score_matrix": list(scores.shape),
        "goals": goals(out),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest run of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for train_speed.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-train-speed-")) if args.smoke else RESULTS)
    started = time.perf_counter()
    out = main(args.smoke)
    out["bench_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_speed.json").write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        print(f"{key:>34}: {value:.3f}" if isinstance(value, float) else f"{key:>34}: {value}")
