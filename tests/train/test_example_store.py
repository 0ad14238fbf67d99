"""The memory-mapped example store: the same batches as in memory, the same training, and disjoint rows per rank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_retrain.model import FeatureEncoder, item_prior
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.distributed import init_process_group, rank_share, sharded_model
from recsys_retrain.train.example_store import (
    StoredExamples,
    open_examples,
    remove_store,
    shared_examples,
    store_folder,
    write_examples,
)
from recsys_retrain.train.examples import Examples, catalogue_snapshots, recency_draws, training_examples
from recsys_retrain.train.loop import TrainLoop
from tests.train.worlds import taste_change_world


def world():
    history, catalogue = taste_change_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    return history, catalogue, encoder, training_examples(history, encoder)


def batch_contents(examples, batches, encoder) -> list[tuple]:
    out = []
    for idx in batches:
        users, labels = examples.batch(idx, encoder)
        out.append((users.values().tolist(), users.lengths().tolist(), labels.tolist(), int(examples.period[idx[0]])))
    return out


class TestStore:
    @pytest.mark.parametrize("half_life", [None, 7.0])
    def test_the_stored_examples_draw_the_same_batches_as_the_in_memory_ones(self, tmp_path, half_life):
        _, _, encoder, examples = world()
        stored = open_examples(write_examples(examples, tmp_path / "store", chunk_rows=50))
        assert isinstance(stored, StoredExamples) and isinstance(stored.users, np.memmap)
        assert len(stored) == len(examples) and len(np.unique(examples.period)) > 4
        draws = recency_draws(examples.period, half_life)
        for seed in (0, 1):
            memory = examples.batches(16, np.random.default_rng(seed), draws)
            disk = stored.batches(16, np.random.default_rng(seed), draws)
            assert batch_contents(examples, memory, encoder) == batch_contents(stored, disk, encoder)

    def test_the_rows_of_one_period_are_contiguous(self, tmp_path):
        _, _, _, examples = world()
        stored = open_examples(write_examples(examples, tmp_path / "store"))
        for p, lo, hi in zip(stored.periods, stored.bounds[:-1], stored.bounds[1:]):
            assert (stored.period[lo:hi] == p).all()
        assert stored.bounds[-1] == len(examples)

    def test_reading_batches_holds_the_batch_not_the_store(self, tmp_path):
        """Reading 20 random batches of a 2M-example store adds megabytes of private memory, not the store's 137 MB."""
        n = 2_000_000
        rng = np.random.default_rng(0)
        big = Examples(users=rng.integers(0, 1000, (n, 4)), labels=rng.integers(0, 500, n), sequence=rng.integers(0, 500, n),
                       start=np.maximum(np.arange(n) - 5, 0), length=np.minimum(np.arange(n), 5),
                       period=np.sort(rng.integers(0, 50, n)))
        folder = write_examples(big, tmp_path / "big")
        del big
        stored = open_examples(folder)
        encoder = FeatureEncoder(user_ids=tuple(range(1000)), item_ids=tuple(range(500)))
        before = rss_mb()
        for _ in range(20):
            stored.batch(rng.integers(0, n, 512), encoder)
        on_disk = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        assert on_disk > 100 and rss_mb() - before < 20

    def test_shared_examples_write_once_and_the_store_is_removed_after(self, tmp_path):
        history, _, encoder, examples = world()
        init_process_group()
        stored = shared_examples(history, encoder, None, tmp_path)
        assert (store_folder(tmp_path) / "labels.npy").exists() and len(stored) == len(examples)
        remove_store(tmp_path)
        assert not store_folder(tmp_path).exists()


def test_training_on_the_store_gives_the_same_losses_and_weights_as_in_memory(tmp_path):
    history, catalogue, encoder, examples = world()
    stored = open_examples(write_examples(examples, tmp_path / "store"))
    init_process_group()
    settings = TrainSettings(embedding_dim=8, batch_size=32, seed=0)
    snapshots = catalogue_snapshots(history, catalogue, encoder, examples.period)
    finals = []
    for source in (examples, stored):
        torch.manual_seed(0)
        dmp, opt = sharded_model(encoder, settings, torch.device("cpu"))
        loop = TrainLoop(dmp, opt, source, encoder, catalogue, encoder.recent_counts(history, catalogue), snapshots,
                         torch.device("cpu"), np.random.default_rng(0), settings, tmp_path / "run",
                         prior=item_prior(history, catalogue), progress=False)
        for epoch in range(2):
            loop.run_epoch(epoch)
        model = loop.recommender().model
        finals.append((loop.losses, model.item_ebc.embedding_bags["t_item_id"].weight.detach().clone()))
    assert finals[0][0] == finals[1][0]
    assert torch.equal(finals[0][1], finals[1][1])


def rss_mb() -> float:
    """The process's private (anonymous) resident memory: mapped file pages are the page cache's, shared and reclaimable."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def _rank(rank: int, world_size: int, folder: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    history, _, encoder, _ = world()
    stored = shared_examples(history, encoder, None, Path(folder) / "run")
    mine = rank_share(stored.batches(16, np.random.default_rng(0)))
    for idx in mine:
        stored.batch(idx, encoder)
    rows = sorted(int(i) for idx in mine for i in idx)
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {"rows": rows, "batches": len(mine)})
    if rank == 0:
        Path(folder, "rows.json").write_text(json.dumps({"ranks": gathered, "examples": len(stored)}))
    remove_store(Path(folder) / "run")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_read_disjoint_shards_of_one_store(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    out = json.loads((tmp_path / "rows.json").read_text())
    first, second = (set(rank["rows"]) for rank in out["ranks"])
    assert first and second and not first & second
    assert out["ranks"][0]["batches"] == out["ranks"][1]["batches"]  # as DMP's collectives need
    assert len(first | second) >= out["examples"] - 16  # only the one batch the world cannot split is left out
    assert not (tmp_path / "run" / "examples" / "node0").exists()
