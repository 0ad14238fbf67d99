"""Training examples on disk, memory-mapped: each rank reads the rows of its own batches and no others.

``training_examples`` builds every example's arrays in memory; held by every rank for the
whole run they cost about 80 bytes per example per rank (0.8 GB a rank at 10^7 events).
Here the node's first rank writes them once, in chunks, into ``.npy`` files sorted by
period (week), and every rank maps the files: a step reads the rows of its batch (the
profile rows, the label and the history slice), so what a rank holds follows the batch,
and the page cache backs all ranks of a node with one copy.

The batches are the same as the in-memory ones: sorted stably by period, each period's
examples keep their order, so the run's generator permutes and resamples them exactly as
``Examples.batches`` does; only the indices name store rows instead of frame rows.
``rank_share`` then hands each rank every world-size-th batch, so within an epoch the ranks
read disjoint sets of rows.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist

from recsys_retrain.model import FeatureEncoder
from recsys_retrain.train.examples import Examples, resample, training_examples

PER_EXAMPLE = ("users", "labels", "start", "length", "period")  # rows follow the examples (sorted by period)
CHUNK_ROWS = 1 << 20  # rows copied at a time while writing
MANIFEST = "examples.json"


@dataclass(frozen=True)
class StoredExamples(Examples):
    """``Examples`` whose arrays are memory-mapped ``.npy`` files, sorted by period.

    ``periods[j]``'s examples are the rows ``bounds[j]:bounds[j + 1]``, so drawing an
    epoch's batches reads no example data at all.
    """

    periods: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bounds: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))

    def batches(
        self, batch_size: int, rng: np.random.Generator, draws: dict[int, int] | None = None
    ) -> list[np.ndarray]:
        """The same draw as ``Examples.batches`` (same generator calls, same order), over row ranges."""
        out = []
        for p, lo, hi in zip(self.periods, self.bounds[:-1], self.bounds[1:]):
            members = np.arange(lo, hi)
            if draws is not None:
                members = resample(members, draws[int(p)], rng)
            members = rng.permutation(members)
            out += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]


def write_examples(examples: Examples, folder: Path, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Writes ``examples`` into ``folder`` as ``.npy`` files sorted (stably) by period, ``chunk_rows`` rows at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(examples.period, kind="stable")
    for name in PER_EXAMPLE:
        source = getattr(examples, name)
        target = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.int64, shape=source.shape)
        for lo in range(0, len(order), chunk_rows):
            target[lo : lo + chunk_rows] = source[order[lo : lo + chunk_rows]]
        target.flush()
        del target
    np.save(folder / "sequence.npy", np.asarray(examples.sequence, dtype=np.int64))
    periods, first = np.unique(examples.period[order], return_index=True)
    np.save(folder / "periods.npy", periods.astype(np.int64))
    np.save(folder / "bounds.npy", np.append(first, len(order)).astype(np.int64))
    (folder / MANIFEST).write_text(json.dumps({"examples": len(order), "periods": len(periods)}))
    return folder


def open_examples(folder: Path) -> StoredExamples:
    """The examples of ``write_examples``, memory-mapped read-only."""
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in (*PER_EXAMPLE, "sequence")}
    return StoredExamples(**arrays, periods=np.load(folder / "periods.npy"), bounds=np.load(folder / "bounds.npy"))


def store_folder(out_dir: Path) -> Path:
    """This node's store in a run folder: one per node (``GROUP_RANK``), as nodes may not share a disk."""
    return out_dir / "examples" / f"node{os.environ.get('GROUP_RANK', '0')}"


def shared_examples(
    history: pd.DataFrame, encoder: FeatureEncoder, since: pd.Timestamp | None, out_dir: Path
) -> StoredExamples:
    """The run's examples, built and written by the node's first rank, memory-mapped by every rank.

    Args:
        history, encoder, since: as ``training_examples``.
        out_dir: the run folder; the store goes to ``store_folder(out_dir)`` (``remove_store`` deletes it).
    """
    folder = store_folder(out_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        write_examples(training_examples(history, encoder, since), folder)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return open_examples(folder)


def remove_store(out_dir: Path) -> None:
    """Deletes the run's example store once every rank is done with it (generated data, rebuilt on a resume)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(store_folder(out_dir), ignore_errors=True)
