"""Convergence signals, cheap enough to read every step.

Every step: loss EMAs (short and long horizon) and the slope between them, gradient
norms per parameter group. Every ``probe_every`` steps, on the dense parameters
only (they are small next to the embedding tables): the curvature along the last
update (a secant estimate, ``(g1 - g0)·(θ1 - θ0) / |θ1 - θ0|²``, the Hessian's Rayleigh
quotient in the direction the optimiser actually moved, at the cost of two vector
copies instead of a Hessian-vector product through TorchRec's fused backward), the
direction consistency of successive gradients (cosine), and the simple gradient noise
scale of McCandlish et al. (2018), ``B · tr(Σ) / |G|²``, from running moments of the
gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Reading:
    """The signals after one step (probe values are those of the latest probe)."""

    step: int
    loss: float
    loss_short: float
    loss_long: float
    slope: float  # (short - long) / |long|: negative while the loss still falls
    grad_norm: float
    grad_norm_long: float
    curvature: float | None
    consistency: float | None
    noise_scale: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class SignalTracker:
    """Tracks the step signals of one run.

    Args:
        short: EMA weight of the short horizon (0.1 is about the last 10 steps).
        long: EMA weight of the long horizon.
        probe_every: steps between curvature / consistency / noise probes.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> tracker = SignalTracker(probe_every=1)
        >>> for _ in range(3):
        ...     w.grad = 2 * w.detach().clone()
        ...     r = tracker.observe(float((w ** 2).sum()), [w], batch_size=8)
        ...     with torch.no_grad():
        ...         w -= 0.1 * w.grad
        >>> round(r.curvature, 3)  # d²/dw² of sum(w²) is 2 in every direction
        2.0
    """

    def __init__(self, short: float = 0.1, long: float = 0.01, probe_every: int = 10) -> None:
        self.short, self.long, self.probe_every = short, long, probe_every
        self.step = 0
        self.loss_short = self.loss_long = math.nan
        self.grad_norm_long = math.nan
        self.curvature: float | None = None
        self.consistency: float | None = None
        self.noise_scale: float | None = None
        self._prev_grad: torch.Tensor | None = None
        self._prev_params: torch.Tensor | None = None
        self._grad_mean: torch.Tensor | None = None
        self._grad_sq = math.nan

    def observe(self, loss: float, params: Iterable[torch.Tensor], batch_size: int, grad_norm: float | None = None) -> Reading:
        """Reads the loss and the gradients of ``params`` (after backward, before the optimiser step)."""
        params = [p for p in params if p.grad is not None]
        if grad_norm is None:
            grad_norm = math.sqrt(sum(float(p.grad.detach().float().pow(2).sum()) for p in params))
        if math.isfinite(loss):
            self.loss_short = ema(self.loss_short, loss, self.short)
            self.loss_long = ema(self.loss_long, loss, self.long if self.step > 1 / self.long else 1 / (self.step + 1))
        if math.isfinite(grad_norm):
            self.grad_norm_long = ema(self.grad_norm_long, grad_norm, max(self.long, 1 / (self.step + 1)))
        if params and self.step % self.probe_every == 0 and math.isfinite(grad_norm):
            self._probe(params, batch_size)
        self.step += 1
        slope = (self.loss_short - self.loss_long) / max(abs(self.loss_long), 1e-12)
        return Reading(
            self.step - 1, loss, self.loss_short, self.loss_long, slope, grad_norm, self.grad_norm_long,
            self.curvature, self.consistency, self.noise_scale,
        )

    def _probe(self, params: list[torch.Tensor], batch_size: int) -> None:
        grad = torch.cat([p.grad.detach().float().reshape(-1) for p in params])
        flat = torch.cat([p.detach().float().reshape(-1) for p in params])
        if self._prev_grad is not None and self._prev_grad.shape == grad.shape:
            moved = flat - self._prev_params
            dist_sq = float(moved.pow(2).sum())
            if dist_sq > 0:
                self.curvature = float((grad - self._prev_grad).dot(moved)) / dist_sq
            denom = float(grad.norm() * self._prev_grad.norm())
            if denom > 0:
                self.consistency = float(grad.dot(self._prev_grad)) / denom
        weight = 0.1
        sq = float(grad.pow(2).sum())
        if self._grad_mean is None or self._grad_mean.shape != grad.shape:
            self._grad_mean, self._grad_sq = grad.clone(), sq
        else:
            self._grad_mean.mul_(1 - weight).add_(grad, alpha=weight)
            self._grad_sq = (1 - weight) * self._grad_sq + weight * sq
            signal = float(self._grad_mean.pow(2).sum())
            if signal > 0:
                self.noise_scale = batch_size * max(self._grad_sq - signal, 0.0) / signal
        self._prev_grad, self._prev_params = grad, flat

    def state_dict(self) -> dict[str, Any]:
        """The EMAs and the last probe's values; the previous gradient, parameters and gradient mean as tensors."""
        return {
            "short": self.short,
            "long": self.long,
            "probe_every": self.probe_every,
            "step": self.step,
            "loss_short": self.loss_short,
            "loss_long": self.loss_long,
            "grad_norm_long": self.grad_norm_long,
            "curvature": self.curvature,
            "consistency": self.consistency,
            "noise_scale": self.noise_scale,
            "_prev_grad": self._prev_grad,
            "_prev_params": self._prev_params,
            "_grad_mean": self._grad_mean,
            "_grad_sq": self._grad_sq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.short, self.long, self.probe_every = state["short"], state["long"], state["probe_every"]
        self.step, self.loss_short, self.loss_long = state["step"], state["loss_short"], state["loss_long"]
        self.grad_norm_long, self.curvature = state["grad_norm_long"], state["curvature"]
        self.consistency, self.noise_scale = state["consistency"], state["noise_scale"]
        self._prev_grad, self._prev_params = state["_prev_grad"], state["_prev_params"]
        self._grad_mean, self._grad_sq = state["_grad_mean"], state["_grad_sq"]


def ema(current: float | None, value: float, weight: float) -> float:
    """Exponential moving average; ``current`` None or NaN means no value yet."""
    if current is None or math.isnan(current):
        return value
    return (1 - weight) * current + weight * value
