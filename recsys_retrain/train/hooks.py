"""What the training loop shows the outside: per-step and per-epoch signals, and the callback hooks.

A scheduler or a monitor sees each step's loss, gradient norms and rates
(``StepSignals``) and each epoch's loss and validation (``EpochSignals``) through a
``Callback``; the gradient norms are read after the backward, before the dense step
consumes the gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchrec.optim.keyed import CombinedOptimizer

from recsys_retrain.model import TwoTower


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
