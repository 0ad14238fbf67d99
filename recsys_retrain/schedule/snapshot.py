"""Snapshots of a model and its optimisers, for the scheduler's rollback.

A snapshot is the ``state_dict`` of the model and of every optimiser, serialised
into memory with ``torch.save``: that copies plain tensors and TorchRec's sharded
tensors alike (the fused embedding optimiser's Adagrad state included), so the same
code restores a plain PyTorch model and a DistributedModelParallel one.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch


class Snapshot:
    """Saves and restores a model and its optimisers.

    Args:
        model: the module whose parameters are saved (a DMP, or any nn.Module).
        optimizers: name -> optimiser whose state (moments, steps) is saved with it.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> snap = Snapshot(model, {"dense": opt})
        >>> saved = snap.save()
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(float("nan"))
        >>> snap.restore(saved)
        >>> bool(torch.isfinite(model.weight).all())
        True
    """

    def __init__(self, model: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.model, self.optimizers = model, dict(optimizers)

    def save(self) -> bytes:
        buffer = io.BytesIO()
        state = {"model": self.model.state_dict(), "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}
        torch.save(state, buffer)
        return buffer.getvalue()

    def restore(self, saved: bytes) -> None:
        # The bytes were written by ``save`` in this process; sharded tensors need the full unpickler.
        state = torch.load(io.BytesIO(saved), weights_only=False)  # nosec B614
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
