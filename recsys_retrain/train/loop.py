"""Training of the two-tower model: ``train()`` and the step loop it drives.

``train`` sets a run up (seeds, process group, the examples memory-mapped from the run
folder (``recsys_retrain.train.example_store``), the sharded model and its
optimizers, the adaptive scheduler of a plan), resumes an interrupted run from its
epoch checkpoint, runs the epochs through a ``TrainLoop`` and writes ``model.pt`` and
``trace.json``. ``TrainLoop`` holds what the steps share, in the manner of TorchRec's
train pipelines: the model and optimizers, the scheduler and resource hooks, the
callbacks, and the run's counters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer
from tqdm.auto import tqdm

from recsys_retrain.errors import DataError
from recsys_retrain.model import FeatureEncoder, Recommender, TwoTower, item_prior, user_spread
from recsys_retrain.schedule.controller import AdaptiveScheduler
from recsys_retrain.schedule.probe import probe_rounds
from recsys_retrain.schedule.rules import Components
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.resource import ResourceController
from recsys_retrain.schedule.trace import Trace
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.blend import best_blend, blend_ndcg
from recsys_retrain.train.checkpoints import (
    epoch_checkpoint_path,
    load_epoch_checkpoint,
    save_checkpoint,
    save_epoch_checkpoint,
)
from recsys_retrain.train.distributed import (
    all_finite,
    dense_parameters,
    device,
    init_process_group,
    load_tower,
    mean_across_ranks,
    rank_share,
    sharded_model,
    unsharded,
)
from recsys_retrain.train.example_store import remove_store, shared_examples
from recsys_retrain.train.examples import Examples, Snapshot, catalogue_snapshots, recency_draws
from recsys_retrain.train.sampled import NegativeSampler, subset_kjt
from recsys_retrain.train.hooks import Callback, EpochSignals, step_signals
from recsys_retrain.train.warm_start import check_embedding_dim, union_encoder, warm_start

log = logging.getLogger(__name__)

# The rate probe's check for a collapsed user tower (``TrainLoop.probe``): the training examples whose
# users it reads, evenly spaced over the time-ordered interactions, and the relative spread of their
# vectors under which the tower has collapsed. Dead ReLUs give exactly 0; on synthetic S3 a tower on its
# way there read 0.008 at x2 of the rules' rates, the one that learnt 0.50 at x1 (``bench/scale.py``).
PROBE_USERS = 512
COLLAPSED_SPREAD = 0.01


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
    blend: float = 0.0  # the served model's share of recent popularity (``recsys_retrain.train.blend``)
    blend_ndcg: dict[str, float] = field(default_factory=dict)  # NDCG@10 on the blend holdout of each blend tried

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch_losses": list(self.epoch_losses), "epoch_samples": list(self.epoch_samples)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(**{**d, "epoch_losses": tuple(d["epoch_losses"]), "epoch_samples": tuple(d.get("epoch_samples", ()))})


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
    init: Recommender | None = None,
    blend_holdout: pd.DataFrame | None = None,
    blend: float | None = None,
    train_from: pd.Timestamp | None = None,
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
        init: the champion to continue from (``load_checkpoint`` or the registry's model). The
            encoder becomes the union of the champion's and this data's
            (``recsys_retrain.train.warm_start``): the champion's rows are carried over by raw
            id, new users and items start as in a fresh run, and the dense layers start from
            the champion's. Its embedding size must be ``settings.embedding_dim``. The
            optimizers start afresh (``model.pt`` keeps no optimizer state), which is why a
            warm start wants a lower rate. None: from scratch.
        blend_holdout: interactions after ``history`` (the validation tail): the served
            score's blend with recent popularity is the one of ``BLEND_GRID`` that ranks
            them best (``recsys_retrain.train.blend``). None or empty: ``blend``.
        train_from: train on the interactions from this time on only (a warm update's
            span); the earlier ones still feed the features, as they do at serving:
            users' history bags and the popularity snapshots and prior. None: all.
        blend: the served blend when there is no ``blend_holdout`` to fit it on (a
            refit keeps its gated model's: nothing later than its data is left to
            choose by). None: 0, the model alone.

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
    if init is not None:
        check_embedding_dim(init.model, settings.embedding_dim)
        encoder = union_encoder(init.encoder, encoder)
    examples = shared_examples(history, encoder, train_from, out_dir)  # memory-mapped: a step reads its batch's rows
    if len(examples) == 0:
        remove_store(out_dir)
        raise DataError(f"no interactions to train on from {train_from} (the history ends {history['timestamp'].max()})")
    draws = recency_draws(examples.period, settings.recency_half_life)
    dmp, opt = sharded_model(encoder, settings, dev, plan)
    if init is not None:
        load_tower(dmp, warm_start(init.model, init.encoder, encoder))
    recent = encoder.recent_counts(history, catalogue)
    prior = item_prior(history, catalogue)
    snapshots = {p: snap.to(dev) for p, snap in catalogue_snapshots(history, catalogue, encoder, examples.period).items()}
    sampler = None
    if len(catalogue) > settings.sampled_softmax_above:
        sampler = NegativeSampler(examples.labels, len(catalogue), settings.sampled_negatives, settings.seed)
    loop = TrainLoop(
        dmp, opt, examples, encoder, catalogue, recent, snapshots, dev, rng, settings, out_dir, prior=prior, draws=draws,
        sampler=sampler,
        sched=scheduler(plan, opt, dmp, examples, draws, components), resource=resource,
        trace=Trace(plan=plan.to_dict() if plan else None), callbacks=callbacks, validate=validate, progress=progress,
    )
    for cb in callbacks:
        cb.on_train_begin(opt)
    first_epoch = loop.resume()
    loop_started = time.perf_counter()
    for epoch in range(first_epoch, settings.epochs):
        if loop.sched is not None and loop.sched.should_stop:
            break
        loop.run_epoch(epoch)
        loop.save()
    loop.finish()
    loop_seconds = time.perf_counter() - loop_started

    tried = {}
    if blend_holdout is not None and not blend_holdout.empty:
        # every rank gathers (a collective); rank 0 holds the whole model, and its blend is the one saved
        tried = blend_ndcg(loop.recommender(), history, blend_holdout)
    blend = best_blend(tried) if tried else float(blend or 0.0)
    path = save_checkpoint(dmp, encoder, catalogue, recent, settings, out_dir, prior, blend)
    trace_path = loop.trace.write(out_dir / "trace.json") if dist.get_rank() == 0 else out_dir / "trace.json"
    epoch_checkpoint_path(out_dir).unlink(missing_ok=True)  # the final checkpoint supersedes it
    remove_store(out_dir)
    best_validation, best_epoch = loop.best()
    return TrainResult(
        str(path), len(examples), loop.steps, tuple(loop.losses), time.perf_counter() - started, loop_seconds,
        str(trace_path), best_validation, best_epoch, loop.step_seconds, loop.sched_seconds, loop.probe_validations,
        tuple(loop.epoch_samples), blend, {str(b): v for b, v in tried.items()},
    )


def scheduler(
    plan: SchedulePlan | None,
    opt: CombinedOptimizer,
    dmp: DistributedModelParallel,
    examples: Examples,
    draws: dict[int, int] | None,
    components: Components,
) -> AdaptiveScheduler | None:
    """The AdaptiveScheduler that steers a run under ``plan``, watching the dense layers; None without a plan.

    Its steps per epoch come from a throwaway generator, so the run's own draws are untouched.
    """
    if plan is None:
        return None
    steps_per_epoch = len(rank_share(examples.batches(plan.batch_size, np.random.default_rng(0), draws)))
    return AdaptiveScheduler(
        dict(opt.optimizers), plan, model=dmp, watch=dense_parameters(dmp),
        steps_per_epoch=max(steps_per_epoch, 1), components=components,
    )


@dataclass
class TrainLoop:
    """The epochs and steps of one run, with the counters they keep.

    Holds the sharded model, its combined optimizer, the run's examples and generator,
    the hooks that watch or steer the steps (an AdaptiveScheduler, a ResourceController,
    callbacks) and what the run has done so far (steps, losses, examples seen, time
    spent). ``run_epoch`` trains one epoch (the first one through the scheduler's rate
    probe when the plan has one); ``step`` is one micro-batch; ``save`` and ``resume``
    go through the epoch checkpoint.

    Example (inside ``train``, after its set-up)::

        loop = TrainLoop(dmp, opt, examples, encoder, catalogue, recent, snapshots, dev, rng, settings, out_dir)
        for epoch in range(loop.resume(), settings.epochs):
            loop.run_epoch(epoch)
            loop.save()
    """

    dmp: DistributedModelParallel
    opt: CombinedOptimizer
    examples: Examples
    encoder: FeatureEncoder
    catalogue: pd.DataFrame  # sorted by item id, as the encoder's rows
    recent: np.ndarray  # the catalogue's recent popularity, for the gathered Recommender
    snapshots: dict[int, Snapshot]  # item features and prior per period, on ``dev``
    dev: torch.device
    rng: np.random.Generator  # the run's generator: every epoch's batch order
    settings: TrainSettings  # after the plan's rates, batch size and epochs
    out_dir: Path
    prior: np.ndarray | None = None  # the catalogue's ``item_prior`` features, for the gathered Recommender
    draws: dict[int, int] | None = None  # ``recency_draws`` of the run
    sched: AdaptiveScheduler | None = None
    resource: ResourceController | None = None
    trace: Trace = field(default_factory=Trace)
    callbacks: Sequence[Callback] = ()
    validate: Callable[[Recommender], float | Sequence[float]] | None = None
    progress: bool = True
    sampler: NegativeSampler | None = None  # a sampled softmax (large catalogues); None: the full softmax
    # progress of the run, restored by ``resume``
    batch_size: int = field(init=False)  # the settings', until a ResourceController changes it
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    # what the run has spent (since its start or a resume)
    seen: int = 0  # examples processed, rate-probe candidates included
    epoch_samples: list[int] = field(default_factory=list)  # ``seen`` at each epoch's end
    step_seconds: float = 0.0
    sched_seconds: float = 0.0
    probe_validations: int = 0
    # the epoch under way
    epoch: int = 0
    total: float = 0.0  # loss times examples of the steps the scheduler let through
    counted: int = 0
    accumulation: int = 1  # micro-batches per dense step
    autocast: bool = False
    tower: TwoTower = field(init=False)
    dense_params: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.batch_size = self.settings.batch_size
        self.tower = next(m for m in self.dmp.modules() if isinstance(m, TwoTower))
        self.dense_params = dense_parameters(self.dmp)

    def resume(self) -> int:
        """Restores an interrupted run's epoch checkpoint, if there is one; returns the epoch to start at."""
        resumed = load_epoch_checkpoint(
            self.out_dir, self.dmp, self.opt, self.rng, self.settings, self.sched, self.trace, self.resource
        )
        if resumed is None:
            return 0
        first_epoch, self.steps, self.losses = resumed["epoch"] + 1, resumed["steps"], list(resumed["losses"])
        self.batch_size = resumed.get("batch_size", self.batch_size)
        log.info("resumed after epoch %d from %s", first_epoch, epoch_checkpoint_path(self.out_dir))
        return first_epoch

    def run_epoch(self, epoch: int) -> None:
        """Trains one epoch, then records its loss and validation and lets the hooks react."""
        self.epoch, self.total, self.counted = epoch, 0.0, 0
        batches = rank_share(self.examples.batches(self.batch_size, self.rng, self.draws))
        self.accumulation = self.resource.accumulation if self.resource is not None else 1
        self.autocast = self.dev.type == "cuda" and (self.resource is None or self.resource.autocast)
        if epoch == 0 and self.sched is not None and self.sched.plan.probe_rates and self.validate is not None:
            self.probe(batches)
        else:
            self.run_steps(batches)
        self.epoch_samples.append(self.seen)
        if self.sched is not None and not all_finite(self.dmp):
            self.sched.recover("nonfinite_weights", math.nan)  # e.g. a NaN written after the epoch's last loss
        self.losses.append(mean_across_ranks(self.total, self.counted))
        log.info("epoch %d loss %.4f", epoch + 1, self.losses[-1])
        score = None
        if self.callbacks or self.validate or self.sched is not None:
            score = metric(self.validate(self.recommender())) if self.validate else None
            if self.sched is not None:
                sched_started = time.perf_counter()
                self.sched.epoch_end(score, self.losses[-1])
                self.sched_seconds += time.perf_counter() - sched_started
            for cb in self.callbacks:
                cb.on_epoch_end(EpochSignals(epoch, self.losses[-1], score), self.opt)
        if self.resource is not None and self.sched is not None:
            self.batch_size = self.resource.adjust(self.batch_size, self.sched, epoch, self.steps)
        self.trace.add_epoch(epoch, self.losses[-1], score, self.opt, self.batch_size)
        if self.sched is not None:
            self.trace.events = [e.to_dict() for e in self.sched.events]

    def probe(self, batches: list[np.ndarray]) -> None:
        """The first epoch under the scheduler's rate probe.

        The probe races the multipliers on the first epoch (successive halving, one share of
        the epoch per round), so the winner has seen the whole epoch when it ends.
        A candidate whose user tower has collapsed (``user_spread`` under ``COLLAPSED_SPREAD``
        on ``PROBE_USERS`` training users) ranks after every candidate it ties with whose
        tower has not: ties go to the higher rate, and the prior carries a dead tower's
        validation to within the tie tolerance. It is not ruled out, nor is an epoch that
        collapses the tower rolled back: its item side and prior weights still learn, and
        on MovieLens the tower often collapses at every rate raced (both stronger forms
        made the demo's models serve worse).
        """
        rounds = probe_rounds(len(self.sched.plan.probe_rates))
        share = max(len(batches) // rounds, 1)
        n = len(self.examples)
        sample = np.unique(np.linspace(0, n - 1, min(PROBE_USERS, n)).astype(np.int64))
        _, first = np.unique(self.examples.users[sample, 0], return_index=True)  # one example per user
        users = self.examples.batch(np.sort(sample[first]), self.encoder)[0] if len(first) > 1 else None
        collapsed = [False]  # the last candidate's

        def candidate(round_: int) -> float | Sequence[float]:
            self.run_steps(batches[round_ * share : (round_ + 1) * share])
            self.probe_validations += 1
            model = self.recommender()
            spread = user_spread(model.model, users) if users is not None else math.inf
            collapsed[0] = spread < COLLAPSED_SPREAD
            if collapsed[0]:
                log.info("rate probe: the user tower collapsed at x%g (user spread %.4f, under %g)",
                         self.sched.control, spread, COLLAPSED_SPREAD)
            return self.validate(model)

        self.sched.probe(candidate, degenerate=lambda: collapsed[0])
        self.run_steps(batches[rounds * share :])  # the few batches a share rounded off

    def run_steps(self, part: list[np.ndarray]) -> None:
        """Trains on ``part`` (the epoch's batches, or a rate probe's share of them)."""
        desc = f"epoch {self.epoch + 1}/{self.settings.epochs}"
        for i, idx in enumerate(tqdm(part, desc=desc, disable=not self.progress, leave=False)):
            self.step(idx, first=i % self.accumulation == 0,
                      last=(i + 1) % self.accumulation == 0 or i + 1 == len(part))

    def step(self, idx: np.ndarray, first: bool = True, last: bool = True) -> None:
        """One micro-batch: forward, backward, the scheduler's look, and the dense step at a group's end.

        Args:
            idx: the batch's example indices (one period).
            first: the first micro-batch of an accumulation group (its gradients are zeroed first).
            last: the group's last one: the dense optimiser steps on the summed gradients.
        """
        step_started = time.perf_counter()
        user_kjt, target = self.examples.batch(idx, self.encoder, self.settings.id_dropout, self.epoch)
        if first:
            self.opt.zero_grad()
        with torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            snap = self.snapshots[int(self.examples.period[idx[0]])]
            if self.sampler is None:
                loss, _ = self.dmp(user_kjt.to(self.dev), snap.items, target.to(self.dev), snap.prior)
            else:
                rows, log_q, target = self.sampler.draw(target.numpy())
                at = torch.from_numpy(rows).to(self.dev)
                loss, _ = self.dmp(user_kjt.to(self.dev), subset_kjt(snap.items, rows), target.to(self.dev),
                                   snap.prior[at], log_q.to(self.dev))
        (loss / self.accumulation).backward()  # the fused embedding rows are updated here, every micro-batch
        value = float(loss.detach())
        sched_started = time.perf_counter()
        signals = step_signals(self.epoch, self.steps, value, self.dense_params, self.tower, self.opt)
        proceed = self.sched is None or self.sched.observe(value, len(idx), signals.dense_grad_norm)
        self.sched_seconds += time.perf_counter() - sched_started
        if proceed:
            if last:
                self.opt.step()  # the dense optimiser, on the gradients of ``accumulation`` micro-batches
            self.total += value * len(idx)
            self.counted += len(idx)
        else:
            self.opt.zero_grad()  # the scheduler restored a snapshot: drop the group's gradients too
        if self.sched is not None:
            sched_started = time.perf_counter()
            self.sched.step()
            self.sched_seconds += time.perf_counter() - sched_started
        self.steps += 1
        self.seen += len(idx)
        self.step_seconds += time.perf_counter() - step_started
        self.trace.add_step(signals)
        for cb in self.callbacks:
            cb.on_step(signals, self.opt)
        if self.resource is not None:
            self.resource.observe_step(time.perf_counter() - step_started, len(idx))

    def save(self) -> None:
        """The epoch checkpoint after the epoch just run: a killed run resumes from here."""
        save_epoch_checkpoint(
            self.out_dir, self.dmp, self.opt, self.rng, self.settings, epoch=self.epoch, steps=self.steps,
            losses=self.losses, sched=self.sched, trace=self.trace, batch_size=self.batch_size, resource=self.resource,
        )

    def finish(self) -> None:
        """Ends the scheduler's run (best weights restored) and puts its events and summary in the trace."""
        if self.sched is not None:
            self.sched.finish()
            self.trace.events = [e.to_dict() for e in self.sched.events]
            self.trace.controller = self.sched.summary()

    def best(self) -> tuple[float | None, int | None]:
        """The scheduler's best validation and its 1-based epoch; Nones without a scheduler or a validation."""
        if self.sched is not None and self.sched.best_epoch >= 0:
            return self.sched.best, self.sched.best_epoch + 1
        return None, None

    def recommender(self) -> Recommender:
        """The model as it stands, gathered into a plain CPU Recommender (for ``validate``)."""
        return unsharded(self.dmp, self.encoder, self.catalogue, self.recent, self.settings.embedding_dim, self.prior)


def metric(value: float | Sequence[float]) -> float:
    """A ``validate`` value as one number: per-user values are averaged."""
    if isinstance(value, (int, float)):
        return float(value)
    values = np.asarray(value, dtype=float)
    return float(values.mean()) if values.size else math.nan
