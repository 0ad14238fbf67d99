"""Training of the two-tower model under TorchRec's DistributedModelParallel.

One place owns the process group, the sharding plan, the fused embedding
optimizer and the dense optimizer. On CPU this is gloo with one process; the same
code runs under ``torchrun`` with more processes (NCCL on GPUs).

Two TorchRec behaviours shape this module (both seen with torchrec 1.8 on CPU):
small tables are planned ``data_parallel`` with a dense kernel unless constrained,
and then the in-backward optimizer never runs; so the planner is told to shard
table-wise with the fused kernel. And a learning rate written into
``fused_optimizer.param_groups`` reaches the kernel only on ``fused_optimizer.step()``,
so the loop calls it every step.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.inference.state_dict_transform import state_dict_gather, state_dict_to_device
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from tqdm.auto import tqdm

from recsys_retrain.errors import DataError, PipelineError
from recsys_retrain.evaluate import USER_COLUMNS
from recsys_retrain.model import HISTORY_CAP, FeatureEncoder, Recommender, TwoTower, TwoTowerTrainTask, build_two_tower
from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.probe import probe_rounds
from recsys_retrain.schedule.resource import ResourceController
from recsys_retrain.schedule.rules import Components
from recsys_retrain.schedule.trace import Trace
from recsys_retrain.settings import TrainSettings

log = logging.getLogger(__name__)
PERIOD_DAYS = 7


@dataclass(frozen=True)
class TrainResult:
    """What a training run leaves behind, small enough for an Airflow XCom."""

    checkpoint: str
    n_samples: int
    n_steps: int
    epoch_losses: tuple[float, ...]
    seconds: float
    loop_seconds: float = 0.0  # the training loop alone, without set-up and checkpointing
    trace: str | None = None  # trace.json: step signals, epoch validation, scheduler events and plan
    best_validation: float | None = None
    best_epoch: int | None = None  # 1-based epoch whose weights were kept
    step_seconds: float = 0.0  # the optimisation steps alone (no validation, no checkpoints)
    scheduler_seconds: float = 0.0  # of which the adaptive scheduler (signals, decisions, snapshots)
    probe_validations: int = 0  # validate() calls of the first epoch's rate probe, made before the per-epoch ones
    # Examples processed by each epoch's end (since the start or a resume), rate-probe candidates included:
    # the compute a run spent, where epoch counts hide the probe's extra passes.
    epoch_samples: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch_losses": list(self.epoch_losses), "epoch_samples": list(self.epoch_samples)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(**{**d, "epoch_losses": tuple(d["epoch_losses"]), "epoch_samples": tuple(d.get("epoch_samples", ()))})


@dataclass(frozen=True)
class StepSignals:
    """What one optimisation step shows a scheduler (``Callback.on_step``)."""

    epoch: int
    step: int
    loss: float
    dense_grad_norm: float
    embedding_grad_norm: float  # of the gradient reaching the pooled embeddings
    dense_lr: float
    sparse_lr: float


@dataclass(frozen=True)
class EpochSignals:
    """What one epoch shows a scheduler (``Callback.on_epoch_end``)."""

    epoch: int
    loss: float
    validation: float | None  # the ``validate`` callable's value, when given


class Callback:
    """Hook points of the training loop; subclass and override what you need.

    ``optimizer`` is the combined optimizer: a callback may change
    ``param_groups[...]["lr"]`` of its ``sparse`` or ``dense`` part, and the loop
    applies it on the next step (it calls the fused optimizer's ``step()``, which is
    what hands a new rate to the fused kernel).
    """

    def on_train_begin(self, optimizer: CombinedOptimizer) -> None:
        """Called once, before the first step."""

    def on_step(self, signals: StepSignals, optimizer: CombinedOptimizer) -> None:
        """Called after every optimisation step."""

    def on_epoch_end(self, signals: EpochSignals, optimizer: CombinedOptimizer) -> None:
        """Called after every epoch, with the validation value if any."""


def init_process_group() -> None:
    """Joins the ``torchrun`` group when launched by it, else a one-process gloo group.

    The one-process group uses an in-memory store, so repeated training in one
    process (tests, ``dag.test()``) needs no free port.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device(f"cuda:{local}")
    return torch.device("cpu")


def shard(task: TwoTowerTrainTask, sparse_lr: float, dev: torch.device) -> DistributedModelParallel:
    """Wraps the train task in DMP with row-wise Adagrad fused into the embedding backward."""
    tower = task.model
    for ebc in (tower.user_ebc, tower.item_ebc):
        apply_optimizer_in_backward(torch.optim.Adagrad, ebc.parameters(), {"lr": sparse_lr})
    tables = [t.name for ebc in (tower.user_ebc, tower.item_ebc) for t in ebc.embedding_bag_configs()]
    constraints = {
        name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for name in tables
    }
    planner = EmbeddingShardingPlanner(
        topology=TopologyFactory.create_topology(
            trainer_config=TrainerConfig(world_size=dist.get_world_size()),
            kernel_config=KernelConfig(compute_device=dev.type),
        ),
        constraints=constraints,
    )
    plan = planner.collective_plan(task, pg=dist.GroupMember.WORLD)
    return DistributedModelParallel(module=task, device=dev, plan=plan)


def optimizer(
    dmp: DistributedModelParallel, dense_lr: float, weight_decay: float = 0.0, beta1: float = 0.9
) -> CombinedOptimizer:
    """Adam on the dense tower layers, combined with DMP's fused embedding optimizer.

    ``weight_decay`` (L2) and ``beta1`` apply to the dense layers only: the fused
    row-wise Adagrad of the embeddings takes neither.
    """
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=dense_lr, betas=(beta1, 0.999), weight_decay=weight_decay),
    )
    return CombinedOptimizer([("sparse", dmp.fused_optimizer), ("dense", dense)])


@dataclass(frozen=True)
class Examples:
    """Training examples: who (profile + causal history) interacted with which catalogue row.

    Each example's history is the user's items *before* it (at most ``HISTORY_CAP``),
    a slice ``sequence[start : start + length]`` of the users' time-ordered items, so
    the model learns to predict the next items from the past, as it is used.
    """

    users: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    start: np.ndarray
    length: np.ndarray
    period: np.ndarray

    def batches(
        self, batch_size: int, rng: np.random.Generator, draws: dict[int, int] | None = None
    ) -> list[np.ndarray]:
        """Shuffled batches, each from a single period so it shares one catalogue snapshot.

        Args:
            batch_size: examples per batch.
            rng: the run's generator (the epoch's order).
            draws: examples to draw from each period (``recency_draws``); None: each
                example once.
        """
        out = []
        for p in np.unique(self.period):
            members = np.flatnonzero(self.period == p)
            if draws is not None:
                members = resample(members, draws[int(p)], rng)
            members = rng.permutation(members)
            out += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, encoder: FeatureEncoder) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        lengths = self.length[idx]
        total = int(lengths.sum())
        gather = np.repeat(self.start[idx] - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        kjt = encoder.user_kjt_encoded(self.users[idx], (self.sequence[gather], lengths))
        return kjt, torch.from_numpy(self.labels[idx])


def recency_draws(period: np.ndarray, half_life_days: float | None) -> dict[int, int] | None:
    """Examples per period for an epoch that weights recent weeks more, at the same epoch size.

    A period ``age`` days before the newest one weighs ``0.5 ** (age / half_life_days)``;
    its draws are its example count times its weight, scaled so the epoch still holds
    about ``len(period)`` examples (the same compute as an unweighted epoch). Under drift
    the oldest interactions describe tastes that no longer hold.

    Args:
        period: the week of each example (``Examples.period``).
        half_life_days: age at which an example counts half; None: no weighting.

    Returns:
        ``{period: draws}``, or None when there is no weighting.

    Example:
        >>> recency_draws(np.array([0, 0, 1, 1]), 7.0)
        {0: 1, 1: 3}
    """
    if half_life_days is None:
        return None
    weeks, counts = np.unique(period, return_counts=True)
    weights = counts * 0.5 ** ((weeks.max() - weeks) * PERIOD_DAYS / half_life_days)
    draws = np.maximum(np.rint(weights * len(period) / weights.sum()), 1).astype(int)
    return {int(w): int(d) for w, d in zip(weeks, draws)}


def resample(members: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``members``: each whole times over, the remainder drawn without replacement (stratified, low variance)."""
    whole, extra = divmod(n, len(members))
    return np.concatenate([np.tile(members, whole), rng.choice(members, extra, replace=False)])


def training_examples(history: pd.DataFrame, encoder: FeatureEncoder) -> Examples:
    """One example per interaction with a catalogue item, with the user's earlier items."""
    frame = history.assign(_row=encoder.item_rows(history["item_id"]))
    frame = frame[frame["_row"] >= 0].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    position = frame.groupby("user_id").cumcount().to_numpy()
    length = np.minimum(position, HISTORY_CAP)
    start = np.arange(len(frame)) - length
    labels = frame["_row"].to_numpy(np.int64)
    users = encoder.encode_users(frame[USER_COLUMNS])
    return Examples(users, labels, labels, start, length, period_of(frame["timestamp"]))


def period_of(timestamps: pd.Series) -> np.ndarray:
    """Week number of each timestamp: the unit of catalogue popularity snapshots."""
    return (timestamps.astype("int64") // (PERIOD_DAYS * 86_400 * 10**9)).to_numpy()


def catalogue_snapshots(
    history: pd.DataFrame, catalogue: pd.DataFrame, encoder: FeatureEncoder, periods: np.ndarray
) -> dict[int, KeyedJaggedTensor]:
    """Item features per period, with popularity counted strictly before the period starts.

    An example from March must not see April's popularity: each period's snapshot
    counts only earlier interactions, as serving would.
    """
    start = pd.to_datetime(np.unique(periods) * PERIOD_DAYS * 86_400 * 10**9, utc=True)
    snapshots = {}
    for period, begin in zip(np.unique(periods), start):
        before = history[history["timestamp"] < begin]
        snapshots[int(period)] = encoder.item_kjt(catalogue, encoder.recent_counts(before, catalogue))
    return snapshots


def train(
    history: pd.DataFrame,
    catalogue: pd.DataFrame,
    out_dir: Path,
    settings: TrainSettings,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    validate: Callable[[Recommender], float | Sequence[float]] | None = None,
    plan: SchedulePlan | None = None,
    components: Components = Components(),
    resource: ResourceController | None = None,
) -> TrainResult:
    """Trains a two-tower model on ``history`` and writes ``out_dir/model.pt`` and ``out_dir/trace.json``.

    Args:
        history: interactions with user profile columns (the data stage's window frame).
        catalogue: every rankable item with ``item_id, item_genres, item_release_year``.
        out_dir: folder of this run; the checkpoint is written atomically.
        settings: dimensions, epochs, batch size, learning rates, seed.
        progress: show a progress bar per epoch.
        callbacks: hook points (per step: loss, gradient norms, rates; per epoch:
            loss and validation) for monitoring.
        validate: scores the model after each epoch (e.g. NDCG@10 on a validation
            window); its value reaches the scheduler and ``Callback.on_epoch_end``. It may
            return the per-user values instead (the same users every call): the metric is
            their mean, and the scheduler's rate probe compares candidates user by user.
        plan: a SchedulePlan from ``recsys_retrain.schedule.calibrate``: its rates, batch size
            and epoch budget replace the settings', its weight decay and beta1 start the
            dense layers' Adam, and an AdaptiveScheduler steers the run (early stop,
            rollback, best weights kept). None: the static schedule.
        components: scheduler parts to switch off (ablations).
        resource: a ResourceController that may change the batch size between epochs.

    Returns:
        TrainResult with the checkpoint path, the mean loss of each epoch and the trace.
    """
    if history.empty:
        raise DataError("training window is empty: no interactions before the holdout")
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    init_process_group()
    dev = device()
    if plan is not None:
        settings = settings.model_copy(
            update={"dense_lr": plan.dense_lr, "sparse_lr": plan.sparse_lr, "batch_size": plan.batch_size,
                    "epochs": plan.max_epochs, "recency_half_life": plan.recency_half_life}
        )

    catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
    encoder = FeatureEncoder.fit(history, catalogue)
    examples = training_examples(history, encoder)
    draws = recency_draws(examples.period, settings.recency_half_life)
    task = TwoTowerTrainTask(build_two_tower(encoder, settings.embedding_dim, "meta"), settings.temperature)
    dmp = shard(task, settings.sparse_lr, dev)
    dense_adam = {"weight_decay": plan.weight_decay, "beta1": plan.beta1} if plan is not None else {}
    opt = optimizer(dmp, settings.dense_lr, **dense_adam)
    opt.init_state()  # materialise the dense optimizer's state, so snapshots and checkpoints always hold it
    recent = encoder.recent_counts(history, catalogue)
    snapshots = {p: kjt.to(dev) for p, kjt in catalogue_snapshots(history, catalogue, encoder, examples.period).items()}

    tower = next(m for m in dmp.modules() if isinstance(m, TwoTower))
    dense_params = [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
    batch_size = settings.batch_size
    sched = None
    if plan is not None:
        sched = AdaptiveScheduler(
            dict(opt.optimizers), plan, model=dmp, watch=dense_params,
            steps_per_epoch=max(len(rank_share(examples.batches(batch_size, np.random.default_rng(0), draws))), 1),
            components=components,
        )
    trace = Trace(plan=plan.to_dict() if plan else None)
    for cb in callbacks:
        cb.on_train_begin(opt)
    losses, steps, first_epoch = [], 0, 0
    resumed = load_epoch_checkpoint(out_dir, dmp, opt, rng, settings, sched, trace, resource)
    if resumed is not None:
        first_epoch, steps, losses = resumed["epoch"] + 1, resumed["steps"], list(resumed["losses"])
        batch_size = resumed.get("batch_size", batch_size)
        log.info("resumed after epoch %d from %s", first_epoch, epoch_checkpoint_path(out_dir))
    loop_started = time.perf_counter()
    step_seconds = sched_seconds = 0.0
    probe_validations = seen = 0
    epoch_samples: list[int] = []  # examples processed by the end of each epoch, rate-probe candidates included
    for epoch in range(first_epoch, settings.epochs):
        if sched is not None and sched.should_stop:
            break
        total, counted = 0.0, 0
        batches = rank_share(examples.batches(batch_size, rng, draws))
        accumulation = resource.accumulation if resource is not None else 1
        autocast = dev.type == "cuda" and (resource is None or resource.autocast)

        def run_steps(part: list[np.ndarray]) -> None:
            """Trains on ``part`` (the epoch's batches, or a rate probe's share of them)."""
            nonlocal total, counted, steps, step_seconds, sched_seconds, seen
            for i, idx in enumerate(tqdm(part, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress, leave=False)):
                step_started = time.perf_counter()
                user_kjt, target = examples.batch(idx, encoder)
                if i % accumulation == 0:
                    opt.zero_grad()
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, _ = dmp(user_kjt.to(dev), snapshots[int(examples.period[idx[0]])], target.to(dev))
                (loss / accumulation).backward()  # the fused embedding rows are updated here, every micro-batch
                value = float(loss.detach())
                sched_started = time.perf_counter()
                signals = step_signals(epoch, steps, value, dense_params, tower, opt)
                proceed = sched is None or sched.observe(value, len(idx), signals.dense_grad_norm)
                sched_seconds += time.perf_counter() - sched_started
                if proceed:
                    if (i + 1) % accumulation == 0 or i + 1 == len(part):
                        opt.step()  # the dense optimiser, on the gradients of ``accumulation`` micro-batches
                    total += value * len(idx)
                    counted += len(idx)
                else:
                    opt.zero_grad()  # the scheduler restored a snapshot: drop the group's gradients too
                if sched is not None:
                    sched_started = time.perf_counter()
                    sched.step()
                    sched_seconds += time.perf_counter() - sched_started
                steps += 1
                seen += len(idx)
                step_seconds += time.perf_counter() - step_started
                trace.add_step(signals)
                for cb in callbacks:
                    cb.on_step(signals, opt)
                if resource is not None:
                    resource.observe_step(time.perf_counter() - step_started, len(idx))

        if epoch == 0 and sched is not None and sched.plan.probe_rates and validate is not None:
            # The rate probe races the multipliers on the first epoch (successive halving, one share of
            # the epoch per round), so the winner has seen the whole epoch when it ends.
            rounds = probe_rounds(len(sched.plan.probe_rates))
            share = max(len(batches) // rounds, 1)

            def candidate(round_: int) -> float:
                nonlocal probe_validations
                run_steps(batches[round_ * share : (round_ + 1) * share])
                probe_validations += 1
                return validate(unsharded(dmp, encoder, catalogue, recent, settings.embedding_dim))

            sched.probe(candidate)
            run_steps(batches[rounds * share :])  # the few batches a share rounded off
        else:
            run_steps(batches)
        epoch_samples.append(seen)
        if sched is not None and not all_finite(dmp):
            sched.recover("nonfinite_weights", math.nan)  # e.g. a NaN written after the epoch's last loss
        losses.append(mean_across_ranks(total, counted))
        log.info("epoch %d loss %.4f", epoch + 1, losses[-1])
        score = None
        if callbacks or validate or sched is not None:
            score = metric(validate(unsharded(dmp, encoder, catalogue, recent, settings.embedding_dim))) if validate else None
            if sched is not None:
                sched_started = time.perf_counter()
                sched.epoch_end(score, losses[-1])
                sched_seconds += time.perf_counter() - sched_started
            for cb in callbacks:
                cb.on_epoch_end(EpochSignals(epoch, losses[-1], score), opt)
        if resource is not None and sched is not None:
            batch_size = resource.adjust(batch_size, sched, epoch, steps)
        trace.add_epoch(epoch, losses[-1], score, opt, batch_size)
        if sched is not None:
            trace.events = [e.to_dict() for e in sched.events]
        save_epoch_checkpoint(
            out_dir, dmp, opt, rng, settings, epoch=epoch, steps=steps, losses=losses, sched=sched, trace=trace,
            batch_size=batch_size, resource=resource,
        )

    if sched is not None:
        sched.finish()
        trace.events = [e.to_dict() for e in sched.events]
        trace.controller = sched.summary()
    loop_seconds = time.perf_counter() - loop_started
    path = save_checkpoint(dmp, encoder, catalogue, recent, settings, out_dir)
    trace_path = trace.write(out_dir / "trace.json") if dist.get_rank() == 0 else out_dir / "trace.json"
    epoch_checkpoint_path(out_dir).unlink(missing_ok=True)  # the final checkpoint supersedes it
    best = (sched.best, sched.best_epoch + 1) if sched is not None and sched.best_epoch >= 0 else (None, None)
    return TrainResult(
        str(path), len(examples), steps, tuple(losses), time.perf_counter() - started, loop_seconds,
        str(trace_path), best[0], best[1], step_seconds, sched_seconds, probe_validations, tuple(epoch_samples),
    )


def metric(value: float | Sequence[float]) -> float:
    """A ``validate`` value as one number: per-user values are averaged."""
    if isinstance(value, (int, float)):
        return float(value)
    values = np.asarray(value, dtype=float)
    return float(values.mean()) if values.size else math.nan


def step_signals(
    epoch: int, step: int, loss: float, dense_params: list[torch.Tensor], tower: TwoTower, opt: CombinedOptimizer
) -> StepSignals:
    """Gradient norms and rates after a backward, before the dense step consumes the gradients."""
    dense_sq = sum(float(p.grad.float().pow(2).sum()) for p in dense_params if p.grad is not None)
    lrs = {name: groups.param_groups[0]["lr"] for name, groups in opt.optimizers}
    return StepSignals(
        epoch=epoch,
        step=step,
        loss=loss,
        dense_grad_norm=math.sqrt(dense_sq),
        embedding_grad_norm=math.sqrt(sum(tower.pooled_grad_sq.values())),
        dense_lr=float(lrs["dense"]),
        sparse_lr=float(lrs["sparse"]),
    )


def epoch_checkpoint_path(out_dir: Path) -> Path:
    """This rank's resume point: sharded weights are saved per rank, so resume needs the same world size."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return out_dir / "checkpoints" / f"last.rank{rank}.pt"


def save_epoch_checkpoint(
    out_dir: Path,
    dmp: DistributedModelParallel,
    opt: CombinedOptimizer,
    rng: np.random.Generator,
    settings: TrainSettings,
    *,
    epoch: int,
    steps: int,
    losses: list[float],
    sched: AdaptiveScheduler | None = None,
    trace: Trace | None = None,
    batch_size: int | None = None,
    resource: ResourceController | None = None,
) -> None:
    """Everything needed to continue after ``epoch``: weights, both optimizers' states, RNG, progress.

    With a scheduler, its state and its in-memory snapshots (best weights, last good
    weights) go into the same file, so a resumed run ends as an uninterrupted one.

    Written to a temp file and renamed, so a crash mid-write leaves the previous epoch's file.
    """
    path = epoch_checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": dmp.state_dict(),
        "optimizer": opt.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "settings": settings.model_dump(),
        "world_size": dist.get_world_size(),
        "epoch": epoch,
        "steps": steps,
        "losses": list(losses),
        "batch_size": batch_size,
        "scheduler": sched.state_dict() if sched is not None else None,
        "scheduler_snapshots": sched.snapshots() if sched is not None else None,
        "trace": trace.to_dict() if trace is not None else None,
        "resource": resource.state_dict() if resource is not None else None,
    }
    if not all_finite(dmp):
        raise PipelineError(f"refusing to write {path.name}: the model has non-finite weights")
    atomic_save(state, path, "epoch checkpoint")


def load_epoch_checkpoint(
    out_dir: Path,
    dmp: DistributedModelParallel,
    opt: CombinedOptimizer,
    rng: np.random.Generator,
    settings: TrainSettings,
    sched: AdaptiveScheduler | None = None,
    trace: Trace | None = None,
    resource: ResourceController | None = None,
) -> dict[str, Any] | None:
    """Restores the last epoch checkpoint of an interrupted run with the same settings and world size.

    A checkpoint of other settings is ignored (and replaced at the next epoch): resuming
    it would silently mix two configurations.
    """
    path = epoch_checkpoint_path(out_dir)
    if not path.exists():
        return None
    # Sharded tensors are not plain tensors, so weights_only loading cannot read them;
    # the file is one this function's twin wrote into the run's own folder.
    state = torch.load(path, map_location="cpu", weights_only=False)  # nosec B614
    if state["settings"] != settings.model_dump() or state["world_size"] != dist.get_world_size():
        log.warning("ignoring %s: written with other settings or world size", path)
        return None
    dmp.load_state_dict(state["model"])
    opt.init_state()  # materialise optimizer state so the saved one can be loaded into it
    opt.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    if sched is not None and state.get("scheduler") is not None:
        sched.load_state_dict(state["scheduler"])
        sched.load_snapshots(state["scheduler_snapshots"])
    if trace is not None and state.get("trace") is not None:
        trace.load(state["trace"])
    if resource is not None and state.get("resource") is not None:
        resource.load_state_dict(state["resource"])
    return state


def rank_share(batches: list[np.ndarray]) -> list[np.ndarray]:
    """This process's batches: every rank gets the same count, as DMP's collectives need.

    All ranks draw the same shuffled list (same seed), then take every world-size-th
    batch; the few left over at the end are dropped for the epoch.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    usable = len(batches) - len(batches) % world
    return batches[rank:usable:world]


def mean_across_ranks(loss_sum: float, count: int) -> float:
    """Mean loss over the samples of all ranks."""
    totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64)
    if dist.get_world_size() > 1:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1].clamp(min=1))


def unsharded(
    dmp: DistributedModelParallel, encoder: FeatureEncoder, catalogue: pd.DataFrame, recent: np.ndarray, dim: int
) -> Recommender:
    """Gathers the sharded weights into a plain CPU Recommender (rank 0 holds the result)."""
    plain = TwoTowerTrainTask(build_two_tower(encoder, dim, "cpu"))
    state = state_dict_to_device(dmp.state_dict(), pg=dist.GroupMember.WORLD, device=torch.device("cpu"))
    target = plain.state_dict()
    state_dict_gather(state, target)
    plain.load_state_dict(target)
    return Recommender(plain.model, encoder, catalogue, recent)


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every weight of ``module`` (sharded or not) is finite: a NaN model is never written."""
    for value in module.state_dict().values():
        tensors = [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            return False
    return True


def save_checkpoint(
    dmp: DistributedModelParallel,
    encoder: FeatureEncoder,
    catalogue: pd.DataFrame,
    recent: np.ndarray,
    settings: TrainSettings,
    out_dir: Path,
) -> Path:
    """One dict (weights, encoder, catalogue, config), written to a temp file then renamed."""
    recommender = unsharded(dmp, encoder, catalogue, recent, settings.embedding_dim)
    path = out_dir / "model.pt"
    if not all_finite(recommender.model):
        raise PipelineError("refusing to save model.pt: the trained model has non-finite weights")
    if dist.get_rank() != 0:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "model": recommender.model.state_dict(),
        "encoder": encoder.to_dict(),
        "catalogue": recommender.catalogue.to_dict(orient="list"),
        "recent": torch.from_numpy(np.asarray(recent, dtype=np.float64)),
        "config": settings.model_dump(),
    }
    atomic_save(state, path, "model")
    return path


def atomic_save(state: dict[str, Any], path: Path, what: str) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: ``path`` is whole or untouched.

    A failed write (disk full, file-size limit) removes the partial temp file and raises a
    one-line PipelineError that says the previous file is kept; torch's own message
    ("PytorchStreamWriter failed writing file data/0") names neither the file nor the cause.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PipelineError(
            f"could not write the {what} {path} ({cause}; {free / 2**20:.1f} MiB free on its disk): {kept}"
        ) from exc


def load_checkpoint(path: Path) -> Recommender:
    """The Recommender saved by ``train``, on CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    encoder = FeatureEncoder.from_dict(ckpt["encoder"])
    model = build_two_tower(encoder, ckpt["config"]["embedding_dim"], "cpu")
    model.load_state_dict(ckpt["model"])
    return Recommender(model, encoder, pd.DataFrame(ckpt["catalogue"]), ckpt["recent"].numpy())


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun --nproc_per_node=N -m recsys_retrain.train``.

    Every process reads the same parquet files; each trains on its share of the
    batches, and rank 0 writes the checkpoint and ``train_result.json``.
    """
    import argparse
    import json

    from recsys_retrain.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m recsys_retrain.train", description=main.__doc__)
    parser.add_argument("--history", type=Path, required=True, help="interactions parquet (data-stage columns)")
    parser.add_argument("--catalogue", type=Path, required=True, help="item catalogue parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt and train_result.json")
    parser.add_argument(
        "--train-settings", type=Path, help="JSON of the train settings section (default: the environment's settings)"
    )
    parser.add_argument("--plan", type=Path, help="plan.json of the calibrate step: train under the adaptive scheduler")
    parser.add_argument("--validation", type=Path, help="validation parquet that steers the scheduler (with --plan)")
    args = parser.parse_args(argv)
    plan, validate = None, None
    if args.plan:
        from recsys_retrain.schedule.plan import SchedulePlan

        payload = json.loads(args.plan.read_text())
        plan = SchedulePlan.from_dict(payload["plan"]) if payload.get("plan") else None
    if args.validation:
        from recsys_retrain.evaluate import user_metrics

        history_for_eval, later = pd.read_parquet(args.history), pd.read_parquet(args.validation)
        k = plan.validation_k if plan is not None else get_settings().eval.k
        validate = lambda model: user_metrics(model, history_for_eval, later, k).ndcg  # noqa: E731
    if args.train_settings:
        train_settings = TrainSettings.model_validate_json(args.train_settings.read_text())
    else:
        train_settings = get_settings().train
    result = train(
        pd.read_parquet(args.history), pd.read_parquet(args.catalogue), args.out, train_settings, progress=False,
        validate=validate, plan=plan,
    )
    if dist.get_rank() == 0:
        (args.out / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
