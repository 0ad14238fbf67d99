"""The in-run controller: a multi-stage learning-rate policy steered by convergence signals.

The rate of every optimiser group is ``initial_lr × warm-up × base decay × control``.
Warm-up and base decay come from the SchedulePlan; ``control`` is the controller's
own bounded multiplier, changed only at validation cycles (epoch ends), at most by
``plan.max_change`` per decision and never twice within ``plan.cooldown`` cycles.

Stages and the cues that move between them (never a fixed epoch):

- ``warmup``: linear ramp; ends once the gradient norm settles (short and long EMAs
  within 25%) or after ``plan.warmup_steps``. A plan with ``probe_rates`` skips it: the
  rate probe (``probe``, the race in ``recsys_retrain.schedule.probe``) races the
  candidates at their full rates instead.
- ``explore``: full rate. Sustained improvement (``improve_cycles`` cycles each better
  by ``plateau_tol``) with consistent gradient directions raises the rate; a plateau
  or a curvature jump (sharper loss surface than when exploring began) cuts it and
  moves to ``refine``.
- ``refine``: each plateau halves the rate; after ``max_refine_cuts`` cuts, ``settle``.
- ``settle``: a plateau here ends the run; the best validated weights are restored.

Safe-fail (``rollback``): a change that makes the next validation worse by more than
``plan.rollback_tol`` is undone and retried at half; a non-finite loss or a collapse
restores a snapshot and halves the rate.

Besides rates: when the training loss keeps falling while the validation metric falls
(a widening generalisation gap), weight decay is raised and, while exploring, the run
returns to its best weights at a higher rate (more gradient noise); Adam's beta1 (or SGD's
momentum) is lowered when gradients turn erratic (successive gradients disagree in
direction, or the norm spikes).

What each decision compares against is a pure function in ``rules``; the cues it reads
are folded in ``convergence``; this module holds the policy's state and acts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

import torch

from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.probe import race, reading_mean
from recsys_retrain.schedule.rollback import RollbackScheduler
from recsys_retrain.schedule.rules import (
    Components,
    Limits,
    clamp_control,
    explore_change,
    generalisation_gap,
    lowered_momentum,
    raised_weight_decay,
    refine_change,
    warmup_over,
)
from recsys_retrain.schedule.signals import SignalTracker


class AdaptiveScheduler(RollbackScheduler):
    """Adjusts learning rates, weight decay and momentum of several optimisers from convergence signals.

    It is used like ``torch.optim.lr_scheduler``: ``step()`` after each optimiser step,
    plus ``observe(loss)`` after ``backward()`` (it reads the gradients) and
    ``epoch_end(validation)`` after each validation cycle. ``state_dict()`` /
    ``load_state_dict()`` round-trip everything but the optimisers and the model,
    which are checkpointed on their own, as in PyTorch.

    Args:
        optimizers: name -> optimiser (an Optimizer, a TorchRec KeyedOptimizer, or the
            parts of a CombinedOptimizer). A single optimiser is named ``"default"``.
            Each group's current ``lr`` is its base rate (kept as ``initial_lr``).
        plan: starting values and thresholds from ``calibrate``.
        model: the module to snapshot for rollbacks (None: no rollback).
        watch: parameters whose gradients feed the signals (default: every parameter
            of every optimiser group that has a gradient; give the dense ones for
            TorchRec, whose fused embedding gradients never reach ``.grad``).
        steps_per_epoch: steps of one epoch, for the base decay over the epoch budget.
        components: parts to switch off, for ablations.
        limits: fixed thresholds.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.01)
        >>> sched = AdaptiveScheduler(opt, SchedulePlan(warmup_steps=2, max_epochs=3), model=model, steps_per_epoch=4)
        >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
        >>> for epoch in range(3):
        ...     for i in range(4):
        ...         opt.zero_grad()
        ...         loss = torch.nn.functional.mse_loss(model(x[i * 4 : i * 4 + 4]), y[i * 4 : i * 4 + 4])
        ...         loss.backward()
        ...         if sched.observe(float(loss), batch_size=4):
        ...             opt.step()
        ...         sched.step()
        ...     sched.epoch_end(validation=-float(torch.nn.functional.mse_loss(model(x), y)))
        >>> sched.stage in ("warmup", "explore", "refine", "settle"), len(sched.get_last_lr())
        (True, 1)
    """

    def __init__(
        self,
        optimizers: Mapping[str, Any] | torch.optim.Optimizer,
        plan: SchedulePlan,
        *,
        model: torch.nn.Module | None = None,
        watch: Iterable[torch.Tensor] | None = None,
        steps_per_epoch: int | None = None,
        components: Components = Components(),
        limits: Limits = Limits(),
    ) -> None:
        if not isinstance(optimizers, Mapping):
            optimizers = {"default": optimizers}
        super().__init__(optimizers, plan, model=model, steps_per_epoch=steps_per_epoch, components=components,
                         limits=limits)
        self.watch = list(watch) if watch is not None else [p for g in self._groups() for p in g["params"]]
        self.signals = SignalTracker()
        self.warmup_done_at: int | None = None if self.stage == "warmup" else 0
        self.refine_cuts = 0
        self.should_stop = False
        self.gap_raises = 0
        self.best_control = 1.0  # the control multiplier the best validated weights were trained at
        self.probed = False
        self._momentum_epoch = -1

    # -- the torch.optim.lr_scheduler surface -------------------------------------------------

    def step(self) -> None:
        """Advances one optimisation step: warm-up ramp and base decay."""
        self.step_count += 1
        if self.stage == "warmup" and warmup_over(self.step_count, self.cues.norm_ratio(), self.plan, self.limits):
            self.warmup_done_at = self.step_count
            ratio = self.cues.norm_ratio()
            if ratio < self.limits.warmup_settle:
                self._event("stage", "gradient_norm_settled", ratio, self.limits.warmup_settle, {},
                            "warm-up over: gradient norm settled", stage="explore")
            else:
                self._event("stage", "warmup_steps", float(self.step_count), float(self.plan.warmup_steps), {},
                            "warm-up over: ramp length reached", stage="explore")
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as plain values: numbers, strings, lists, dicts and None.

        The signal tracker's entry also holds its last probe's gradient and parameter
        vectors as tensors. All of it survives ``torch.save`` and
        ``torch.load(weights_only=True)``. Left out, as ``torch.optim.lr_scheduler``
        leaves them out: the optimisers and the model (checkpointed on their own), the
        in-memory snapshots (``snapshots()``), the last step's reading (the next step
        reads new signals), and what ``load_state_dict`` rebuilds: the rates in the
        optimiser groups, and the smoothed metric and its best (``Convergence``).
        """
        return {
            **super().state_dict(),
            "warmup_done_at": self.warmup_done_at,
            "refine_cuts": self.refine_cuts,
            "should_stop": self.should_stop,
            "gap_raises": self.gap_raises,
            "best_control": self.best_control,
            "probed": self.probed,
            "_momentum_epoch": self._momentum_epoch,
            "signals": self.signals.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict()``; rebuilds the derived fields and sets the groups' rates from it.

        Load the optimisers' states first: their groups hold ``initial_lr``, which the
        rates are rebuilt from.
        """
        self.warmup_done_at, self.refine_cuts = state["warmup_done_at"], state["refine_cuts"]
        self.should_stop, self.gap_raises = state["should_stop"], state["gap_raises"]
        self.best_control, self.probed = state["best_control"], state["probed"]
        self._momentum_epoch = state["_momentum_epoch"]
        self.signals.load_state_dict(state["signals"])
        super().load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        """What the knowledge base keeps of this run: the rate multipliers (when exploring ended, and
        when the kept weights were trained) and the best epoch."""
        return {
            "explore_control": self.explore_control if self.explore_control is not None else self.control,
            "best_control": self.best_control,
            "best_epoch": self.best_epoch + 1 if self.best_epoch >= 0 else None,
            "best_validation": self.best if self.best_epoch >= 0 else None,
            "epochs": self.epoch,
            "rollbacks": self.rollbacks,
            "stage": self.stage,
        }

    # -- the rate probe --------------------------------------------------------------------------

    def probe(self, run: Callable[[int], float | Sequence[float]], degenerate: Callable[[], bool] | None = None) -> float:
        """Races ``plan.probe_rates`` by successive halving; goes on from the winner. Returns its validation.

        ``run(round)`` trains one share of the first epoch at the current rates and
        returns the validation metric (or the per-user values it is the mean of); the
        race itself, and how it ranks, is ``recsys_retrain.schedule.probe.race``. Each
        candidate is this scheduler with its model and optimisers, saved and restored
        whole. The winner's state is restored, its multiplier becomes the controller's,
        and one ``lr_probe`` event records every reading.

        The probe replaces the warm-up ramp: each candidate starts at its full rate, and
        one that diverges (a non-finite loss is rolled back and halves its rate) loses
        the race on its readings. ``degenerate()``, asked after each ``run``, flags a
        candidate that ranks last among the candidates it ties with (the trainer's: its
        user tower collapsed).

        Example:
            >>> import torch
            >>> model = torch.nn.Linear(1, 1, bias=False)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> sched = AdaptiveScheduler(opt, SchedulePlan(probe_rates=(1.0, 2.0, 4.0, 8.0)), model=model)
            >>> sched.probe(lambda r: -abs(opt.param_groups[0]["lr"] - 0.4))  # the best rate is x4
            -0.0
            >>> sched.control, sched.stage
            (4.0, 'explore')
        """
        if self.snapshot is None or not self.plan.probe_rates:
            return run(0)
        rates = self.plan.probe_rates
        if self.stage == "warmup":
            self.warmup_done_at = self.step_count
            self._event("stage", "rate_probe", float(len(rates)), None, {},
                        "warm-up replaced by the rate probe: each candidate starts at its full rate", stage="explore")
        self.probed = True
        won = race(rates, run, save=self._save_candidate, restore=self._restore_candidate, set_rate=self._start_at,
                   tol=self.plan.probe_tol, z=self.plan.probe_z, degenerate=degenerate)
        self._restore_candidate(won.saved)
        self._last_good = won.saved[0]
        value, baseline = reading_mean(won.readings[-1]), fmean(map(reading_mean, won.field[rates[0]]))
        old = {f"{name}_lr": float(opt.param_groups[0]["initial_lr"]) for name, opt in self.optimizers.items()}
        changes = {k: (v, v * won.multiplier) for k, v in old.items()}
        scores = won.scores(rates)
        self._event("lr_probe", "validation", fmean(map(reading_mean, won.readings)), baseline, changes,
                    f"raced rate multipliers on shares of the first epoch ({scores}): kept x{won.multiplier:g}"
                    + ("; degenerate (last among ties): " + ", ".join(f"x{m:g}" for m in won.degenerate)
                       if won.degenerate else ""))
        return value

    def _save_candidate(self) -> tuple[bytes, dict[str, Any]]:
        """A rate-probe candidate: the model and optimisers (a snapshot) and a copy of this scheduler's state."""
        return self.snapshot.save(), copy.deepcopy(self.state_dict())

    def _restore_candidate(self, saved: tuple[bytes, dict[str, Any]]) -> None:
        weights, state = saved
        self.snapshot.restore(weights)
        self.load_state_dict(copy.deepcopy(state))

    def _start_at(self, multiplier: float) -> None:
        """Starts a rate-probe candidate at ``multiplier`` times the base rates."""
        self.control = clamp_control(multiplier, self.limits)
        self._apply()

    # -- per step --------------------------------------------------------------------------------

    def observe(self, loss: float, batch_size: int | None = None, grad_norm: float | None = None) -> bool:
        """Reads the loss and gradients after ``backward()``; False when the step must be skipped.

        A non-finite loss restores the latest snapshot and halves the rate: the caller
        must not apply the optimiser step (TorchRec's fused optimiser has already
        written the embedding rows, which the restore undoes).
        """
        reading = self.signals.observe(loss, self.watch, batch_size or self.plan.batch_size, grad_norm)
        self.cues.read_step(reading)
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.recover("nonfinite_loss", loss)
            return False
        self.cues.read_probes(reading, self.signals.probe_every)
        if (
            self.components.momentum and self._momentum_epoch != self.epoch
            and reading.grad_norm > self.limits.grad_spike * reading.grad_norm_long > 0
        ):
            self._momentum_epoch = self.epoch  # one spike-driven change per validation cycle: spikes come in bursts
            self._lower_momentum("gradient_spike", reading.grad_norm / reading.grad_norm_long, self.limits.grad_spike)
        return True

    # -- per validation cycle --------------------------------------------------------------------

    def epoch_end(self, validation: float | None, train_loss: float | None = None) -> None:
        """Decides at the end of an epoch: judge the pending change, then move stage or rate.

        Args:
            validation: the validation metric (higher is better), e.g. NDCG@10.
            train_loss: the epoch's mean training loss (for the generalisation-gap cue).
        """
        self.epoch += 1
        if train_loss is not None:
            self.cues.train_losses.append(float(train_loss))
        if validation is None or not math.isfinite(validation):
            return
        self.cues.validations.append(float(validation))
        # the rate probe's epoch sets no curvature reference (see Convergence.close_curvature_epoch)
        self.cues.close_curvature_epoch(self.stage == "explore" and not (self.probed and self.epoch <= 1))
        if self.epoch >= self.plan.max_epochs:
            self._judge_pending(validation)
            self._track_best(self.cues.validations[-1])
            self._stop("budget", float(self.epoch), float(self.plan.max_epochs), "epoch budget spent")
            return
        if self._judge_pending(validation) or self._collapsed(validation):
            return
        self._track_best(validation)
        self.cooldown = max(self.cooldown - 1, 0)
        if self.snapshot is not None:
            self._last_good = self.snapshot.save()
        if self.stage == "warmup" or self.cooldown > 0:
            return
        if self.components.weight_decay and generalisation_gap(self.cues, self.plan.plateau_tol):
            self._regularise(validation)
        elif self.stage == "explore":
            self._explore(validation)
        elif self.stage == "refine":
            self._refine(validation)
        elif self.cues.since_improvement >= self.plan.patience and self.epoch >= self.plan.min_epochs:
            since = self.cues.since_improvement
            self._stop("validation_plateau", float(since), float(self.plan.patience),
                       f"no gain above {self.plan.plateau_tol:.1%} for {since} cycles while settling")

    def _track_best(self, validation: float) -> None:
        """Folds ``validation`` into the cues; a new best keeps its weights and its rate multiplier."""
        if self.cues.read_validation(validation, self.epoch, self.plan.smoothing, self.plan.plateau_tol):
            self.best_control = self.control
            if self.snapshot is not None:
                self._best_snapshot = self.snapshot.save()

    # -- decisions -------------------------------------------------------------------------------

    def _explore(self, validation: float) -> None:
        change = explore_change(self.cues, self.plan, self.limits, self.components)
        if change is None:
            return
        if change.trigger == "sustained_improvement":
            self.cues.improving_streak = 0  # a raise spends the streak that earned it
        self._change_rate(change.factor, change.trigger, change.value, change.threshold, validation, change.why,
                          stage=change.stage)

    def _refine(self, validation: float) -> None:
        change = refine_change(self.cues, self.refine_cuts, self.plan, self.limits)
        if change is None:
            return
        self.refine_cuts += 1
        self._change_rate(change.factor, change.trigger, change.value, change.threshold, validation, change.why,
                          stage=change.stage)

    def _regularise(self, validation: float) -> None:
        """Validation falls while the training loss still falls: the model fits what does not carry over.

        Two regularisers. Weight decay on the dense layers rises (the explicit one). While
        exploring, the run also goes back to its best validated weights and raises the
        rate by ``plan.max_change``: more gradient noise per step is SGD's implicit
        regulariser (Smith & Le, 2018). On MovieLens the lower-rate runs of
        ``bench/scheduler.py`` slide into this pattern (training loss down, ranking on later
        weeks down) while the higher-rate ones hold. The raise is judged like any other
        rate change and happens at most ``limits.max_gap_raises`` times.
        """
        gap = self.cues.train_losses[-2] - self.cues.train_losses[-1]
        back = (
            self.stage == "explore" and self.components.raise_rate and self._best_snapshot is not None
            and self.gap_raises < self.limits.max_gap_raises
        )
        if back:
            self.snapshot.restore(self._best_snapshot)  # before the decay change: the restore resets the groups
            self._last_good = self._best_snapshot
        changes = {}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                if "weight_decay" not in group or name == "sparse":
                    continue
                old = float(group["weight_decay"])
                new = raised_weight_decay(old, self.limits)
                group["weight_decay"] = new
                changes[f"{name}_weight_decay"] = (old, new)
        if changes:
            self.cooldown = self.plan.cooldown
            self._event("weight_decay_up", "generalisation_gap", gap, 0.0, changes,
                        "training loss still falls while validation falls")
        if back:
            self.gap_raises += 1
            self._change_rate(self.plan.max_change, "generalisation_gap", gap, 0.0, validation,
                              f"training loss still falls while validation falls: back to the weights of epoch "
                              f"{self.best_epoch + 1} (validation {self.best:.4f}) at a higher rate, more gradient noise")

    def _lower_momentum(self, trigger: str, value: float, threshold: float) -> None:
        changes = {}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                lowered = lowered_momentum(group, self.limits)
                if lowered is None:
                    continue
                key, old, new = lowered
                group[key] = (new, group[key][1]) if key == "betas" else new
                changes[f"{name}_{'beta1' if key == 'betas' else 'momentum'}"] = (float(old), float(new))
        if changes:
            self._event("momentum_down", trigger, value, threshold, changes, "gradients turned erratic")

    def _stop(self, trigger: str, value: float, threshold: float, why: str) -> None:
        self.should_stop = True
        self._event("stop", trigger, value, threshold, {}, why)
