"""Convergence signals read off real gradients: curvature, direction consistency, noise scale, loss trend."""

from __future__ import annotations

import pytest
import torch

from recsys_retrain.schedule.signals import SignalTracker


def quadratic_steps(hessian: torch.Tensor, noise: float = 0.0, steps: int = 30, lr: float = 0.05, seed: int = 0):
    """Gradient descent on 0.5 wᵀHw (plus optional gradient noise); yields the tracker's readings."""
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.ones(hessian.shape[0]))
    tracker = SignalTracker(probe_every=1)
    readings = []
    for _ in range(steps):
        loss = 0.5 * w @ hessian @ w
        w.grad = hessian @ w.detach() + noise * torch.randn_like(w)
        readings.append(tracker.observe(float(loss), [w], batch_size=32))
        with torch.no_grad():
            w -= lr * w.grad
    return readings


def test_curvature_is_the_hessian_along_the_direction_moved():
    flat = quadratic_steps(torch.eye(3) * 2.0)
    sharp = quadratic_steps(torch.eye(3) * 20.0, lr=0.01)
    assert flat[-1].curvature == pytest.approx(2.0, rel=1e-3)
    assert sharp[-1].curvature == pytest.approx(20.0, rel=1e-3)


def test_direction_consistency_is_high_on_a_smooth_descent_and_low_under_noise():
    smooth = quadratic_steps(torch.eye(4))
    noisy = quadratic_steps(torch.eye(4), noise=50.0)
    assert smooth[-1].consistency > 0.99
    assert abs(sum(r.consistency for r in noisy[5:]) / len(noisy[5:])) < 0.5


def test_noise_scale_grows_with_gradient_noise():
    quiet = quadratic_steps(torch.eye(4), noise=0.01, steps=60)
    loud = quadratic_steps(torch.eye(4), noise=5.0, steps=60)
    assert loud[-1].noise_scale > 10 * quiet[-1].noise_scale


def test_loss_slope_is_negative_while_the_loss_falls():
    readings = quadratic_steps(torch.eye(2), steps=80)
    assert readings[-1].slope < 0
    assert readings[-1].loss_short < readings[0].loss
