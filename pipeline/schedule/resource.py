"""Resource-aware control: hold a throughput budget by changing the batch size between epochs.

Per-step overhead (Python, kernel launches, the all-to-all of sharded embeddings)
does not grow with the batch, so when the machine slows down (a noisy neighbour, a
throttled GPU) larger batches win back samples per second. A larger batch also
averages more gradient noise, so the learning rate follows the batch size by the rule
of the gradient noise scale B_noise (McCandlish et al., 2018): linear scaling while the
new batch stays below B_noise (the regime where a bigger batch is like more steps),
square-root scaling above it (diminishing returns). Memory over its budget halves the
batch, with the same rule downwards.
"""

from __future__ import annotations

import math
import resource as _resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.schedule.controller import AdaptiveScheduler


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (CUDA: peak allocated on the current device)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class ResourceController:
    """Watches step time, throughput and memory; changes the batch size to hold a budget.

    Args:
        min_throughput: samples per second to hold (None: the best throughput of the
            first ``budget_epochs`` epochs).
        max_memory_mb: memory budget (None: no memory control).
        tolerance: relative shortfall that triggers a change.
        min_batch / max_batch: bounds of the batch size.
        memory: reads current memory use in MiB (injectable for tests).

    Example:
        >>> rc = ResourceController(min_throughput=1000.0)
        >>> for _ in range(10):
        ...     rc.observe_step(1.0, 512)  # 512 samples/s: below the budget
        >>> rc.throughput()
        512.0
    """

    def __init__(
        self,
        min_throughput: float | None = None,
        max_memory_mb: float | None = None,
        tolerance: float = 0.25,
        min_batch: int = 64,
        max_batch: int = 8192,
        memory: Callable[[], float] = peak_memory_mb,
        budget_epochs: int = 2,
    ) -> None:
        self.min_throughput, self.max_memory_mb, self.tolerance = min_throughput, max_memory_mb, tolerance
        self.budget_epochs = budget_epochs if min_throughput is None else 0
        self.min_batch, self.max_batch, self.memory = min_batch, max_batch, memory
        self._seconds = 0.0
        self._samples = 0
        self.history: list[dict[str, float]] = []

    def observe_step(self, seconds: float, samples: int) -> None:
        self._seconds += seconds
        self._samples += samples

    def throughput(self) -> float:
        return self._samples / self._seconds if self._seconds > 0 else math.inf

    def adjust(self, batch_size: int, sched: AdaptiveScheduler, epoch: int, steps: int) -> int:
        """The batch size for the next epoch; scales the scheduler's rates with it and records the event."""
        rate, memory = self.throughput(), self.memory()
        self.history.append({"epoch": epoch, "throughput": rate, "memory_mb": memory, "batch_size": batch_size})
        self._seconds, self._samples = 0.0, 0
        if len(self.history) <= self.budget_epochs and math.isfinite(rate):
            # The budget is the best of the first epochs: the first one alone pays one-off costs (allocation, warm caches).
            self.min_throughput = max(self.min_throughput or 0.0, rate)
            return batch_size
        new, trigger, value, threshold = batch_size, "", 0.0, 0.0
        if self.max_memory_mb is not None and memory > self.max_memory_mb * (1 + self.tolerance):
            new, trigger, value, threshold = max(batch_size // 2, self.min_batch), "memory", memory, self.max_memory_mb
        elif self.min_throughput and rate < self.min_throughput * (1 - self.tolerance):
            new, trigger, value = min(batch_size * 2, self.max_batch), "throughput", rate
            threshold = self.min_throughput * (1 - self.tolerance)
        if new == batch_size:
            return batch_size
        factor = self.lr_factor(batch_size, new, sched.signals.noise_scale)
        sched.scale_rates(
            factor, "batch_size", trigger, value, threshold, {"batch_size": (float(batch_size), float(new))},
            f"{trigger} {value:.0f} vs budget {threshold:.0f}: batch {batch_size} -> {new}, rate x{factor:.2f} "
            f"(noise scale {sched.signals.noise_scale or float('nan'):.0f})",
        )
        return new

    @staticmethod
    def lr_factor(old: int, new: int, noise_scale: float | None) -> float:
        """Rate multiplier for a batch change: linear below the noise scale, square root above it."""
        ratio = new / old
        if noise_scale is not None and max(old, new) <= noise_scale:
            return ratio
        return math.sqrt(ratio)

    def state_dict(self) -> dict[str, Any]:
        return {"min_throughput": self.min_throughput, "history": self.history, "budget_epochs": self.budget_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.min_throughput, self.history = state["min_throughput"], state["history"]
        self.budget_epochs = state.get("budget_epochs", self.budget_epochs)
