"""Resource-aware control: hold a throughput and memory budget between epochs.

Three levers, decided at each epoch's end:

- **Precision (GPU).** A slowdown on CUDA first turns on bf16 autocast, the cheapest
  lever for accuracy; a non-finite loss under bf16 turns it off again (fp32).
- **Batch size.** Per-step overhead (Python, kernel launches, the all-to-all of sharded
  embeddings) does not grow with the batch, so when the machine slows down (a noisy
  neighbour, a throttled GPU) larger batches win back samples per second. A larger
  batch also averages more gradient noise, so the learning rate follows the batch size
  by the rule of the gradient noise scale B_noise (McCandlish et al., 2018): linear
  scaling while the new batch stays below B_noise (the regime where a bigger batch is
  like more steps), square-root scaling above it (diminishing returns).
- **Gradient accumulation.** Memory over its budget halves the micro-batch and doubles
  the accumulation, so the dense optimiser still steps on the same effective batch
  and keeps its rate. The fused embedding optimiser cannot accumulate (TorchRec
  applies its Adagrad update inside the backward pass), so embedding rows
  take twice as many half-size updates; Adagrad normalises each row's step by
  its own gradient history, which keeps that close to the same trajectory. Past
  ``max_accumulation`` the batch itself halves, with the rate rule downwards.
"""

from __future__ import annotations

import math
import resource as _resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys_retrain.schedule.controller import AdaptiveScheduler


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
        budget_epochs: epochs whose best throughput becomes the budget when ``min_throughput`` is None.
        max_accumulation: most micro-batches one dense step may accumulate.
        cuda: whether training runs on CUDA (precision is a lever there only); None: ask torch.
        patience: consecutive epochs below the throughput budget before a lever moves (a
            neighbour's burst often lasts one epoch; a batch change is not free to undo).

    Attributes:
        accumulation: micro-batches per dense optimiser step (1: none).
        precision: ``"fp32"`` or ``"bf16"`` (autocast), for CUDA; always ``"fp32"`` elsewhere.

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
        max_accumulation: int = 8,
        cuda: bool | None = None,
        patience: int = 2,
    ) -> None:
        import torch

        self.min_throughput, self.max_memory_mb, self.tolerance = min_throughput, max_memory_mb, tolerance
        self.budget_epochs = budget_epochs if min_throughput is None else 0
        self.min_batch, self.max_batch, self.memory = min_batch, max_batch, memory
        self.max_accumulation = max_accumulation
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.patience = patience
        self.slow_epochs = 0
        self.accumulation = 1
        self.precision = "fp32"
        self._seconds = 0.0
        self._samples = 0
        self._nonfinite_seen = 0
        self.history: list[dict[str, float]] = []

    @property
    def autocast(self) -> bool:
        """Whether the next epoch runs under bf16 autocast."""
        return self.cuda and self.precision == "bf16"

    def observe_step(self, seconds: float, samples: int) -> None:
        self._seconds += seconds
        self._samples += samples

    def throughput(self) -> float:
        return self._samples / self._seconds if self._seconds > 0 else math.inf

    def adjust(self, batch_size: int, sched: AdaptiveScheduler, epoch: int, steps: int) -> int:
        """The micro-batch size for the next epoch; sets ``accumulation`` and ``precision``, scales rates, records events."""
        rate, memory = self.throughput(), self.memory()
        self.history.append({"epoch": epoch, "throughput": rate, "memory_mb": memory, "batch_size": batch_size,
                             "accumulation": self.accumulation, "precision": self.precision})
        self._seconds, self._samples = 0.0, 0
        if self._precision_failed(sched):
            return batch_size
        if self.max_memory_mb is not None and memory > self.max_memory_mb * (1 + self.tolerance):
            return self._relieve_memory(batch_size, sched, memory)
        if len(self.history) <= self.budget_epochs and math.isfinite(rate):
            # The budget is the best of the first epochs: the first one alone pays one-off costs (allocation, warm caches).
            self.min_throughput = max(self.min_throughput or 0.0, rate)
            return batch_size
        threshold = self.min_throughput * (1 - self.tolerance) if self.min_throughput else 0.0
        if rate >= threshold:
            self.slow_epochs = 0
            return batch_size
        self.slow_epochs += 1
        if self.slow_epochs < self.patience:
            return batch_size
        self.slow_epochs = 0
        if self.cuda and self.precision == "fp32":
            self._set_precision("bf16", sched, "throughput", rate, threshold,
                                f"throughput {rate:.0f} vs budget {threshold:.0f}: bf16 autocast on")
            return batch_size
        if self.accumulation > 1:  # memory-bound already: a bigger micro-batch would not fit
            return batch_size
        return self._resize(batch_size, min(batch_size * 2, self.max_batch), sched, "throughput", rate, threshold)

    def _relieve_memory(self, batch_size: int, sched: AdaptiveScheduler, memory: float) -> int:
        """Half the micro-batch; the accumulation doubles so the dense step keeps its batch and rate."""
        new = max(batch_size // 2, self.min_batch)
        if new >= batch_size:
            return batch_size
        if self.accumulation * 2 > self.max_accumulation:
            return self._resize(batch_size, new, sched, "memory", memory, self.max_memory_mb)
        old_accumulation, self.accumulation = self.accumulation, self.accumulation * 2
        sched.record(
            "accumulation", "memory", memory, self.max_memory_mb,
            {"batch_size": (float(batch_size), float(new)), "accumulation": (float(old_accumulation), float(self.accumulation))},
            f"memory {memory:.0f} MiB vs budget {self.max_memory_mb:.0f}: micro-batch {batch_size} -> {new}, "
            f"{self.accumulation} micro-batches per dense step (effective batch and rates unchanged)",
        )
        return new

    def _resize(self, batch_size: int, new: int, sched: AdaptiveScheduler, trigger: str, value: float, threshold: float) -> int:
        if new == batch_size:
            return batch_size
        factor = self.lr_factor(batch_size, new, sched.signals.noise_scale)
        sched.scale_rates(
            factor, "batch_size", trigger, value, threshold, {"batch_size": (float(batch_size), float(new))},
            f"{trigger} {value:.0f} vs budget {threshold:.0f}: batch {batch_size} -> {new}, rate x{factor:.2f} "
            f"(noise scale {sched.signals.noise_scale or float('nan'):.0f})",
        )
        return new

    def _precision_failed(self, sched: AdaptiveScheduler) -> bool:
        """A non-finite loss under bf16 since the last epoch end: back to fp32 (True when it switched)."""
        seen = sum(1 for e in sched.events if e.action == "rollback" and e.trigger.startswith("nonfinite"))
        fresh, self._nonfinite_seen = seen > self._nonfinite_seen, seen
        if fresh and self.autocast:
            self._set_precision("fp32", sched, "nonfinite_loss", float(seen), 0.0,
                                "non-finite loss under bf16 autocast: back to fp32")
            return True
        return False

    def _set_precision(self, precision: str, sched: AdaptiveScheduler, trigger: str, value: float, threshold: float,
                       reason: str) -> None:
        codes = {"fp32": 32.0, "bf16": 16.0}
        old, self.precision = self.precision, precision
        sched.record("precision", trigger, value, threshold, {"precision_bits": (codes[old], codes[precision])}, reason)

    @staticmethod
    def lr_factor(old: int, new: int, noise_scale: float | None) -> float:
        """Rate multiplier for a batch change: linear below the noise scale, square root above it."""
        ratio = new / old
        if noise_scale is not None and max(old, new) <= noise_scale:
            return ratio
        return math.sqrt(ratio)

    def state_dict(self) -> dict[str, Any]:
        return {"min_throughput": self.min_throughput, "history": self.history, "budget_epochs": self.budget_epochs,
                "accumulation": self.accumulation, "precision": self.precision, "nonfinite_seen": self._nonfinite_seen,
                "slow_epochs": self.slow_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.min_throughput, self.history = state["min_throughput"], state["history"]
        self.budget_epochs = state.get("budget_epochs", self.budget_epochs)
        self.accumulation = state.get("accumulation", 1)
        self.precision = state.get("precision", "fp32")
        self._nonfinite_seen = state.get("nonfinite_seen", 0)
        self.slow_epochs = state.get("slow_epochs", 0)
