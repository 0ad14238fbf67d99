"""The in-run controller: a multi-stage learning-rate policy steered by convergence signals.

The rate of every optimiser group is ``initial_lr × warm-up × base decay × control``.
Warm-up and base decay come from the SchedulePlan; ``control`` is the controller's
own bounded multiplier, changed only at validation cycles (epoch ends), at most by
``plan.max_change`` per decision and never twice within ``plan.cooldown`` cycles.

Stages and the cues that move between them (never a fixed epoch):

- ``warmup``: linear ramp; ends once the gradient norm settles (short and long EMAs
  within 25%) or after ``plan.warmup_steps``. A plan with ``probe_rates`` skips it: the
  rate probe (``probe``) races the candidates at their full rates instead.
- ``explore``: full rate. Sustained improvement (``improve_cycles`` cycles each better
  by ``plateau_tol``) with consistent gradient directions raises the rate; a plateau
  or a curvature jump (sharper loss surface than when exploring began) cuts it and
  moves to ``refine``.
- ``refine``: each plateau halves the rate; after ``max_refine_cuts`` cuts, ``settle``.
- ``settle``: a plateau here ends the run; the best validated weights are restored.

Safe-fail: before each change the controller snapshots the model and optimiser states.
If the next validation is worse than before the change by more than
``plan.rollback_tol``, it restores the snapshot and retries with half the change (in
log scale). A non-finite loss restores the latest snapshot at once and halves the rate;
so does a collapse (validation below half of the best with no change pending).

Besides rates: when the training loss keeps falling while the validation metric falls
(a widening generalisation gap), weight decay is raised and, while exploring, the run
returns to its best weights at a higher rate (more gradient noise); Adam's beta1 (or SGD's
momentum) is lowered when gradients turn erratic (successive gradients disagree in
direction, or the norm spikes).
"""

from __future__ import annotations

import copy
import math
from statistics import fmean, stdev
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from recsys_retrain.schedule.events import ScheduleEvent
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.schedule.signals import Reading, SignalTracker, ema
from recsys_retrain.schedule.snapshot import Snapshot

STAGES = ("warmup", "explore", "refine", "settle")


@dataclass(frozen=True)
class Components:
    """Parts of the controller that can be switched off (for ablations)."""

    curvature: bool = True
    weight_decay: bool = True
    momentum: bool = True
    rollback: bool = True
    raise_rate: bool = True


@dataclass(frozen=True)
class Limits:
    """Thresholds of the controller that are not data-dependent (the plan holds those that are)."""

    warmup_start: float = 0.1  # first warm-up multiplier
    warmup_settle: float = 0.25  # |short/long - 1| of the gradient norm that ends warm-up early
    raise_factor: float = 1.5  # rate raise on sustained improvement (bounded by max_change)
    cut_factor: float = 0.5  # rate cut on a plateau or curvature jump (bounded by max_change)
    max_refine_cuts: int = 2
    curvature_jump: float = 3.0  # curvature EMA over its explore-stage reference
    min_consistency: float = 0.0  # mean cosine of successive gradients below this is erratic
    grad_spike: float = 5.0  # gradient norm over its long EMA that counts as a spike
    beta_factor: float = 0.9  # beta1 / momentum multiplier when gradients are erratic
    min_beta: float = 0.5
    weight_decay_start: float = 1e-5  # first weight decay when the plan starts without one
    weight_decay_factor: float = 3.0
    max_weight_decay: float = 1e-2
    collapse: float = 0.5  # validation below this share of the best, with no change pending, is a collapse
    max_gap_raises: int = 2  # returns to the best weights at a higher rate on a generalisation gap, per run
    min_control: float = 1e-3
    max_control: float = 8.0


@dataclass
class _Pending:
    """A change awaiting its verdict at the next validation cycle."""

    action: str
    trigger: str
    factor: float
    before: float  # validation before the change
    snapshot: bytes
    retries: int = 0


class AdaptiveScheduler:
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
        self.optimizers = dict(optimizers)
        self.plan, self.components, self.limits = plan, components, limits
        self.snapshot = Snapshot(model, self.optimizers) if model is not None else None
        self.watch = list(watch) if watch is not None else [p for g in self._groups() for p in g["params"]]
        self.steps_per_epoch = steps_per_epoch
        self.signals = SignalTracker()
        for group in self._groups():
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self.epoch = 0
        self.stage = "warmup" if plan.warmup_steps > 0 else "explore"
        self.warmup_done_at: int | None = None if self.stage == "warmup" else 0
        self.control = 1.0
        self.cooldown = 0
        self.refine_cuts = 0
        self.validations: list[float] = []
        self.train_losses: list[float] = []
        self.best = -math.inf
        self.smoothed: float | None = None
        self.smooth_best = -math.inf
        self.smoothed_history: list[float] = []
        self.best_epoch = -1
        self.since_improvement = 0
        self.improving_streak = 0
        self.curvature_median: float | None = None
        self.curvature_ref: float | None = None
        self.consistency_ema: float | None = None
        self.should_stop = False
        self.events: list[ScheduleEvent] = []
        self.last_reading: Reading | None = None
        self.rollbacks = 0
        self.gap_raises = 0
        self.best_control = 1.0  # the control multiplier the best validated weights were trained at
        self.probed = False
        self._momentum_epoch = -1
        self.explore_control: float | None = None  # control multiplier when exploring ended
        self._pending: _Pending | None = None
        self._last_good: bytes | None = None
        self._best_snapshot: bytes | None = None
        self.grad_norm_short: float | None = None
        self._curvature_epoch: list[float] = []
        self._apply()
        if self.snapshot is not None:
            self._last_good = self.snapshot.save()  # so a NaN in the first epoch has a state to return to

    # -- the torch.optim.lr_scheduler surface -------------------------------------------------

    def get_last_lr(self) -> list[float]:
        """Current rate of every group, optimisers in insertion order."""
        return [float(g["lr"]) for g in self._groups()]

    def lrs(self) -> dict[str, float]:
        """Current rate of each optimiser's first group, by name."""
        return {name: float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()}

    def step(self) -> None:
        """Advances one optimisation step: warm-up ramp and base decay."""
        self.step_count += 1
        if self.stage == "warmup" and self._warmup_over():
            self.warmup_done_at = self.step_count
            ratio = self._norm_ratio()
            if ratio < self.limits.warmup_settle:
                self._event("stage", "gradient_norm_settled", ratio, self.limits.warmup_settle, {},
                            "warm-up over: gradient norm settled", stage="explore")
            else:
                self._event("stage", "warmup_steps", float(self.step_count), float(self.plan.warmup_steps), {},
                            "warm-up over: ramp length reached", stage="explore")
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimisers, the model and the snapshots (saved with the checkpoint instead)."""
        skip = {"optimizers", "snapshot", "watch", "_pending", "_last_good", "_best_snapshot", "signals", "last_reading"}
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["plan"] = self.plan.to_dict()
        state["components"], state["limits"] = asdict(self.components), asdict(self.limits)
        state["events"] = [e.to_dict() for e in self.events]
        state["signals"] = self.signals.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.plan = SchedulePlan.from_dict(state.pop("plan"))
        self.components, self.limits = Components(**state.pop("components")), Limits(**state.pop("limits"))
        self.events = [ScheduleEvent.from_dict(e) for e in state.pop("events")]
        self.signals.load_state_dict(state.pop("signals"))
        self.__dict__.update(state)
        self._apply()

    def scale_rates(
        self, factor: float, action: str, trigger: str, value: float, threshold: float,
        extra: dict[str, tuple[float, float]], reason: str,
    ) -> None:
        """Multiplies every rate by ``factor`` on behalf of another controller (e.g. the batch-size rule)."""
        old = self.lrs()
        self.control = min(max(self.control * factor, self.limits.min_control), self.limits.max_control)
        self._apply()
        changes = {**extra, **{f"{k}_lr": (old[k], v) for k, v in self.lrs().items() if v != old[k]}}
        self._event(action, trigger, value, threshold, changes, reason)

    def probe(self, run: Callable[[int], float | Sequence[float]]) -> float:
        """Races ``plan.probe_rates`` by successive halving; goes on from the winner. Returns its validation.

        ``run(round)`` trains one share of the first epoch (round ``round``'s share) at
        the current rates and returns the validation metric. Round 0 starts every
        candidate from the same weights; each later round continues the better half of
        the candidates, each from its own weights, optimiser states and scheduler state,
        on the next share, until one is left (two rounds for four candidates). Every
        round ranks by ``race_order``: the mean of a candidate's validations so far (one
        reading of a ranking metric on a small validation window is noisy, and early in
        training the order of the rates can still flip), with the candidates within
        ``plan.probe_tol`` of the best counted as tied and the higher rate first. The
        last round, which picks the run's rate, asks for more: when ``run`` returns the
        per-user values its metric is the mean of (the same users every time), a
        finalist within the tolerance is still behind, not tied, if a paired comparison
        of its users with the leader's puts it more than ``plan.probe_z`` standard errors
        lower. Earlier rounds keep the tolerance alone: they only choose which candidates
        race on, and after a share of an epoch a higher rate often still reads lower for
        a while before it overtakes. The winner's state is restored, its multiplier
        becomes the controller's, and one ``lr_probe`` event records every reading.

        The probe replaces the warm-up ramp: each candidate starts at its full rate, and
        one that diverges (a non-finite loss is rolled back and halves its rate) loses
        the race on its readings. A rules-based plan knows a good rate only to within a
        factor of a few, and racing is cheaper than the epochs a streak-driven raise
        (x1.5 per two improving cycles) would take to get there.

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
        start = (self.snapshot.save(), copy.deepcopy(self.state_dict()))
        alive: list[tuple[float, tuple[bytes, dict[str, Any]], list[ProbeReading]]] = [(m, start, []) for m in rates]
        field: dict[float, list[ProbeReading]] = {}
        rounds = probe_rounds(len(rates))
        for round_ in range(rounds):
            raced = []
            for multiplier, (weights, state), readings in alive:
                self.snapshot.restore(weights)
                self.load_state_dict(copy.deepcopy(state))
                if round_ == 0:
                    self.control = min(max(multiplier, self.limits.min_control), self.limits.max_control)
                    self._apply()
                readings = [*readings, as_reading(run(round_))]
                raced.append((multiplier, (self.snapshot.save(), copy.deepcopy(self.state_dict())), readings))
            raced = race_order(raced, self.plan.probe_tol, self.plan.probe_z if round_ == rounds - 1 else None)
            alive = raced[: max(len(raced) // 2, 1)]
            field.update({m: r for m, _, r in raced})
        multiplier, (weights, state), readings = raced[0]
        self.snapshot.restore(weights)
        self.load_state_dict(state)
        self._last_good = weights
        value, baseline = reading_mean(readings[-1]), fmean(map(reading_mean, field[rates[0]]))
        old = {f"{name}_lr": float(opt.param_groups[0]["initial_lr"]) for name, opt in self.optimizers.items()}
        changes = {k: (v, v * multiplier) for k, v in old.items()}
        scores = ", ".join(f"x{m:g} " + " > ".join(f"{reading_mean(v):.4f}" for v in field[m]) for m in rates)
        self._event("lr_probe", "validation", fmean(map(reading_mean, readings)), baseline, changes,
                    f"raced rate multipliers on shares of the first epoch ({scores}): kept x{multiplier:g}")
        return value

    def record(
        self, action: str, trigger: str, value: float, threshold: float, changes: dict[str, tuple[float, float]], reason: str,
    ) -> None:
        """Records a change another controller made (precision, accumulation) as one of this run's events."""
        self._event(action, trigger, value, threshold, changes, reason)

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

    def snapshots(self) -> dict[str, bytes | None]:
        """The in-memory snapshots (best and last good weights), for an epoch checkpoint."""
        pending = asdict(self._pending) if self._pending is not None else None
        return {"last_good": self._last_good, "best": self._best_snapshot, "pending": pending}

    def load_snapshots(self, saved: dict[str, bytes | None] | None) -> None:
        if saved:
            self._last_good, self._best_snapshot = saved.get("last_good"), saved.get("best")
            self._pending = _Pending(**saved["pending"]) if saved.get("pending") else None

    # -- per step --------------------------------------------------------------------------------

    def observe(self, loss: float, batch_size: int | None = None, grad_norm: float | None = None) -> bool:
        """Reads the loss and gradients after ``backward()``; False when the step must be skipped.

        A non-finite loss restores the latest snapshot and halves the rate: the caller
        must not apply the optimiser step (TorchRec's fused optimiser has already
        written the embedding rows, which the restore undoes).
        """
        reading = self.signals.observe(loss, self.watch, batch_size or self.plan.batch_size, grad_norm)
        self.last_reading = reading
        if math.isfinite(reading.grad_norm):
            self.grad_norm_short = ema(self.grad_norm_short, reading.grad_norm, 0.1)
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.recover("nonfinite_loss", loss)
            return False
        self._track_probes(reading)
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
            self.train_losses.append(float(train_loss))
        if validation is None or not math.isfinite(validation):
            return
        self.validations.append(float(validation))
        self._close_curvature_epoch()
        if self.epoch >= self.plan.max_epochs:
            self._judge_pending(validation)
            self._track_best(self.validations[-1])
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
        if self._overfitting():
            self._regularise(validation)
        elif self.stage == "explore":
            self._explore(validation)
        elif self.stage == "refine":
            self._refine(validation)
        elif self.since_improvement >= self.plan.patience and self.epoch >= self.plan.min_epochs:
            self._stop("validation_plateau", float(self.since_improvement), float(self.plan.patience),
                       f"no gain above {self.plan.plateau_tol:.1%} for {self.since_improvement} cycles while settling")

    def finish(self) -> bool:
        """Restores the best validated weights if the current ones are worse; True when it did."""
        if self._best_snapshot is None or not self.validations or self.validations[-1] >= self.best:
            return False
        self.snapshot.restore(self._best_snapshot)
        self._apply()
        self._event("restore_best", "best_validation", self.best, self.validations[-1], {},
                    f"restored the weights of epoch {self.best_epoch + 1} (validation {self.best:.4f})")
        return True

    # -- decisions -------------------------------------------------------------------------------

    def _explore(self, validation: float) -> None:
        if self.components.curvature and self._curvature_jumped():
            self._change_rate(self.limits.cut_factor, "curvature_jump", self.curvature_median / self.curvature_ref,
                              self.limits.curvature_jump, validation, "loss surface sharper than when exploring began",
                              stage="refine")
        elif self.since_improvement >= self.plan.patience:
            self._change_rate(self.limits.cut_factor, "validation_plateau", float(self.since_improvement),
                              float(self.plan.patience), validation, "validation plateau while exploring", stage="refine")
        elif (
            self.components.raise_rate
            and self.improving_streak >= self.plan.improve_cycles
            and (self.consistency_ema is None or self.consistency_ema > self.limits.min_consistency)
        ):
            self.improving_streak = 0
            self._change_rate(self.limits.raise_factor, "sustained_improvement", float(self.plan.improve_cycles),
                              float(self.plan.improve_cycles), validation,
                              f"validation improved for {self.plan.improve_cycles} cycles with consistent gradients")

    def _refine(self, validation: float) -> None:
        if self.since_improvement < self.plan.patience:
            return
        self.refine_cuts += 1
        settle = self.refine_cuts >= self.limits.max_refine_cuts
        self._change_rate(self.limits.cut_factor, "validation_plateau", float(self.since_improvement),
                          float(self.plan.patience), validation, "validation plateau while refining",
                          stage="settle" if settle else "refine")

    def _change_rate(
        self, factor: float, trigger: str, value: float, threshold: float, validation: float, why: str,
        stage: str | None = None, retries: int = 0,
    ) -> None:
        bound = self.plan.max_change
        factor = min(max(factor, 1 / bound), bound)
        new_control = min(max(self.control * factor, self.limits.min_control), self.limits.max_control)
        if new_control == self.control and stage is None:
            return
        old = self.lrs()
        if self.stage == "explore" and stage not in (None, "explore") and self.explore_control is None:
            self.explore_control = self.control
        if self.snapshot is not None and self.components.rollback:
            self._pending = _Pending("rate", trigger, factor, validation, self._last_good or self.snapshot.save(), retries)
        self.control = new_control
        self.cooldown = self.plan.cooldown
        self.since_improvement = 0
        self._apply()
        changes = {f"{k}_lr": (old[k], v) for k, v in self.lrs().items() if v != old[k]}
        action = "lr_up" if factor > 1 else "lr_down"
        self._event(action, trigger, value, threshold, changes, f"{why}: rate x{factor:.2f}", stage=stage)

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
        gap = self.train_losses[-2] - self.train_losses[-1]
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
                new = min(old * self.limits.weight_decay_factor if old > 0 else self.limits.weight_decay_start,
                          self.limits.max_weight_decay)
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
                key = "betas" if "betas" in group else "momentum" if group.get("momentum") else None
                if key is None:
                    continue
                old = group[key][0] if key == "betas" else group[key]
                new = max(old * self.limits.beta_factor, self.limits.min_beta)
                if new == old:
                    continue
                group[key] = (new, group[key][1]) if key == "betas" else new
                changes[f"{name}_{'beta1' if key == 'betas' else 'momentum'}"] = (float(old), float(new))
        if changes:
            self._event("momentum_down", trigger, value, threshold, changes, "gradients turned erratic")

    def _judge_pending(self, validation: float) -> bool:
        """Undoes the last change when validation fell by more than ``rollback_tol``; True when it did."""
        pending, self._pending = self._pending, None
        if pending is None or validation >= _lowered(pending.before, self.plan.rollback_tol):
            return False
        old = self.lrs()
        self.snapshot.restore(pending.snapshot)
        self.control /= pending.factor
        smaller = math.copysign(abs(math.log(pending.factor)) / 2, math.log(pending.factor))
        self.rollbacks += 1
        self._apply()
        self._event("rollback", "validation_drop", validation, _lowered(pending.before, self.plan.rollback_tol),
                    {f"{k}_lr": (old[k], v) for k, v in self.lrs().items()},
                    f"validation fell from {pending.before:.4f} to {validation:.4f} after {pending.trigger}; "
                    "restored the weights from before the change")
        self.validations[-1] = pending.before
        if pending.retries < 1 and abs(smaller) > 1e-3:
            self._change_rate(math.exp(smaller), pending.trigger, validation, pending.before, pending.before,
                              "retrying with half the change", retries=pending.retries + 1)
        else:
            self.cooldown = self.plan.cooldown
        return True

    def _collapsed(self, validation: float) -> bool:
        """Validation fell below ``limits.collapse`` of the best with no change to blame: restore, halve the rate.

        A rate that trained well can still blow a model up a few epochs later without a
        NaN (the ranking falls to near random and stays there); that is the same
        instability as a non-finite loss, so it gets the same answer: the best weights
        back and half the rate. True when it did.
        """
        lowest = _lowered(self.best, 1 - self.limits.collapse)
        if self._best_snapshot is None or not self.components.rollback or validation >= lowest:
            return False
        self._last_good = self._best_snapshot
        self.cooldown = self.plan.cooldown
        self._fall_back(self._best_snapshot, "validation_collapse", validation, lowest,
                        f"validation fell to {validation:.4f}, below {self.limits.collapse:.0%} of the best "
                        f"({self.best:.4f}); restored the weights of epoch {self.best_epoch + 1} and halved the rate")
        self.validations[-1] = self.best
        return True

    def recover(self, trigger: str, value: float) -> None:
        """Restores the latest snapshot and halves the rate (a non-finite loss or weights)."""
        saved = self._last_good or self._best_snapshot if self.snapshot is not None and self.components.rollback else None
        what = "restored the last snapshot" if saved else "no snapshot yet: skipped the step"
        self._fall_back(saved, trigger, value, None, f"{trigger.replace('_', ' ')} ({value}); {what} and halved the rate")

    def _fall_back(self, saved: bytes | None, trigger: str, value: float, threshold: float | None, reason: str) -> None:
        """Restores ``saved`` (when there is one), halves the rate and records the rollback."""
        old = self.lrs()
        if saved:
            self.snapshot.restore(saved)
        self.control = max(self.control * self.limits.cut_factor, self.limits.min_control)
        self.rollbacks += 1
        self._apply()
        self._event("rollback", trigger, value, threshold, {f"{k}_lr": (old[k], v) for k, v in self.lrs().items()}, reason)

    def _stop(self, trigger: str, value: float, threshold: float, why: str) -> None:
        self.should_stop = True
        self._event("stop", trigger, value, threshold, {}, why)

    # -- signals ---------------------------------------------------------------------------------

    def _track_best(self, validation: float) -> None:
        """Plateau and streak cues read the smoothed metric; the kept weights are those of the best raw value."""
        self.smoothed = validation if self.smoothed is None else ema(self.smoothed, validation, self.plan.smoothing)
        self.smoothed_history.append(self.smoothed)
        if self.smooth_best == -math.inf or self.smoothed > self.smooth_best + self.plan.plateau_tol * abs(self.smooth_best):
            self.since_improvement = 0
            self.improving_streak += 1
        else:
            self.since_improvement += 1
            self.improving_streak = 0
        self.smooth_best = max(self.smooth_best, self.smoothed)
        if validation > self.best:
            self.best, self.best_epoch, self.best_control = validation, self.epoch - 1, self.control
            if self.snapshot is not None:
                self._best_snapshot = self.snapshot.save()

    def _track_probes(self, reading: Reading) -> None:
        probed = reading.step % self.signals.probe_every == 0
        if probed and reading.curvature is not None and math.isfinite(reading.curvature):
            self._curvature_epoch.append(reading.curvature)
        if reading.consistency is not None and math.isfinite(reading.consistency):
            self.consistency_ema = ema(self.consistency_ema, reading.consistency, 0.2)

    def _close_curvature_epoch(self) -> None:
        """Epoch median of the curvature probes; the first explore epoch's median is the reference.

        Not the rate probe's epoch: it starts from the initial weights at full rate, where the
        loss surface sharpens on its own as training leaves the flat start (progressive
        sharpening), and a reference taken there makes the next epoch look like a jump.
        """
        if self._curvature_epoch:
            self.curvature_median = float(sorted(self._curvature_epoch)[len(self._curvature_epoch) // 2])
            probe_epoch = self.probed and self.epoch <= 1
            if self.curvature_ref is None and self.stage == "explore" and self.curvature_median > 0 and not probe_epoch:
                self.curvature_ref = self.curvature_median
        self._curvature_epoch = []

    def _curvature_jumped(self) -> bool:
        return (
            self.curvature_ref is not None
            and self.curvature_median is not None
            and self.curvature_ref > 0
            and self.curvature_median > self.limits.curvature_jump * self.curvature_ref
        )

    def _overfitting(self) -> bool:
        if not self.components.weight_decay or len(self.smoothed_history) < 3 or len(self.train_losses) < 3:
            return False
        v, t = self.smoothed_history[-3:], self.train_losses[-3:]
        return v[2] < v[1] < v[0] and t[2] < t[1] < t[0] and v[2] < _lowered(self.best, self.plan.plateau_tol)

    def _norm_ratio(self) -> float:
        r = self.last_reading
        if r is None or not r.grad_norm_long or self.grad_norm_short is None:
            return math.inf
        return abs(self.grad_norm_short / r.grad_norm_long - 1)

    def _warmup_over(self) -> bool:
        if self.step_count >= self.plan.warmup_steps:
            return True
        return self.step_count >= self.plan.warmup_steps // 2 and self._norm_ratio() < self.limits.warmup_settle

    # -- rates -----------------------------------------------------------------------------------

    def _factor(self) -> float:
        if self.stage == "warmup":
            ramp = min(self.step_count / max(self.plan.warmup_steps, 1), 1.0)
            warm = self.limits.warmup_start + (1 - self.limits.warmup_start) * ramp
        else:
            warm = 1.0
        return warm * self._decay() * self.control

    def _decay(self) -> float:
        if self.plan.decay == "none" or not self.steps_per_epoch:
            return 1.0
        total = self.plan.max_epochs * self.steps_per_epoch
        t = min(self.step_count / max(total, 1), 1.0)
        floor = self.plan.decay_floor
        if self.plan.decay == "linear":
            return 1 - (1 - floor) * t
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        factor = self._factor()
        for group in self._groups():
            group["lr"] = group["initial_lr"] * factor

    def _groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def _event(
        self, action: str, trigger: str, value: float | None, threshold: float | None,
        changes: dict[str, tuple[float, float]], reason: str, stage: str | None = None,
    ) -> None:
        if stage is not None:
            self.stage = stage
        self.events.append(
            ScheduleEvent(self.step_count, self.epoch, self.stage, action, trigger, value, threshold, changes, reason)
        )


ProbeReading = float | tuple[float, ...]  # a probe reading: the metric, or the per-user values it is the mean of


def as_reading(value: float | Sequence[float]) -> ProbeReading:
    """A validation value as the probe keeps it; anything non-finite reads as -inf (a diverged candidate)."""
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else -math.inf
    values = tuple(float(v) for v in value)
    return values if values and all(math.isfinite(v) for v in values) else -math.inf


def reading_mean(reading: ProbeReading) -> float:
    return fmean(reading) if isinstance(reading, tuple) else reading


def race_order(
    raced: list[tuple[float, Any, list[ProbeReading]]], tol: float, z: float | None = None,
) -> list[tuple[float, Any, list[ProbeReading]]]:
    """Rate-probe candidates ``(multiplier, state, readings)`` from best to worst.

    A candidate whose mean reading is within ``tol`` of the best mean is a tie with it: the
    readings cannot tell such rates apart, and among ties the higher rate ranks first
    (cutting a rate later is one decision, and more gradient noise regularises). The rest
    follow by mean reading; a stable sort keeps the lower rate first on an exact tie, and
    when every candidate diverged.

    With per-user readings and ``z``, a candidate within ``tol`` is still behind, not tied,
    when ``paired_gap`` puts it more than ``z`` standard errors below the best: the same
    users score both, so most of what makes one reading noisy (which users the window
    holds) cancels in the per-user differences, and a relative tolerance wide enough for
    the noise of unpaired means hides real gaps.

    Example:
        >>> [m for m, _, _ in race_order([(1.0, None, [0.10]), (2.0, None, [0.12]), (4.0, None, [0.11]),
        ...                               (8.0, None, [0.02])], tol=0.15)]
        [4.0, 2.0, 1.0, 8.0]
        >>> best, behind = (0.30, 0.20, 0.25, 0.35), (0.27, 0.18, 0.22, 0.32)  # every user lower
        >>> [m for m, _, _ in race_order([(1.0, None, [best]), (2.0, None, [behind])], tol=0.15, z=1.0)]
        [1.0, 2.0]
    """
    scored = sorted(((fmean(map(reading_mean, c[2])), c) for c in raced), key=lambda p: -p[0])  # each mean once
    top, leader = scored[0]
    if not math.isfinite(top):
        return [c for _, c in scored]
    bar = _lowered(top, tol)

    def tied(mean: float, c: tuple[float, Any, list[ProbeReading]]) -> bool:
        if mean < bar:
            return False
        gap = paired_gap(leader[2], c[2]) if z is not None else None
        return gap is None or gap[0] <= z * gap[1]

    ties = [tied(m, c) for m, c in scored]
    return sorted((c for (_, c), t in zip(scored, ties) if t), key=lambda c: -c[0]) + [
        c for (_, c), t in zip(scored, ties) if not t
    ]


def paired_gap(best: list[ProbeReading], other: list[ProbeReading]) -> tuple[float, float] | None:
    """Mean per-user shortfall of ``other`` behind ``best`` and its standard error; None without per-user readings.

    Each candidate's per-user values are averaged over its readings first (the same users
    every round), then differenced user by user.
    """
    if not best or len(best) != len(other) or not all(isinstance(r, tuple) for r in (*best, *other)):
        return None
    n = len(best[0])
    if n < 2 or any(len(r) != n for r in (*best, *other)):
        return None
    diffs = [fmean(b[u] for b in best) - fmean(o[u] for o in other) for u in range(n)]
    return fmean(diffs), stdev(diffs) / math.sqrt(n)


def probe_rounds(candidates: int) -> int:
    """Rounds of successive halving that leave one of ``candidates`` (one for a single candidate)."""
    return max(math.ceil(math.log2(candidates)), 1) if candidates > 0 else 0


def probe_passes(candidates: int) -> float:
    """Passes over the data that the probe's epoch costs (1.0: nothing extra).

    Each round trains its candidates on ``1 / rounds`` of the epoch and keeps the better half.
    """
    rounds, alive, total = probe_rounds(candidates), candidates, 0.0
    for _ in range(rounds):
        total, alive = total + alive / rounds, max(alive // 2, 1)
    return max(total, 1.0)


def _lowered(value: float, tol: float) -> float:
    """``value`` lowered by the relative tolerance ``tol`` (for metrics of either sign)."""
    return value - tol * abs(value)
