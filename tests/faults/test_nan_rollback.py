"""Fault: the loss turns NaN mid-run (a weight is poisoned after a step).

With the adaptive scheduler the run restores its last snapshot, halves the rate and
ends with a finite model; with the static schedule the trainer refuses to write the
NaN model at all. Either way no NaN model exists to be registered or promoted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from recsys_retrain.errors import PipelineError
from recsys_retrain.evaluate import evaluate
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.hooks import Callback
from recsys_retrain.train.loop import train
from tests.faults.conftest import copy_cycle, report

SETTINGS = TrainSettings(embedding_dim=8, batch_size=256, epochs=3, seed=0)
PLAN = SchedulePlan(dense_lr=0.01, sparse_lr=0.05, batch_size=256, warmup_steps=5, max_epochs=3, min_epochs=1)


class PoisonDense(Callback):
    """After step ``step``, fills the first dense weight with NaN: the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, signals, optimizer):
        if signals.step == self.step:
            dense = dict(optimizer.optimizers)["dense"]
            with torch.no_grad():
                dense.param_groups[0]["params"][0].fill_(float("nan"))


def frames(pulled: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    root = Path(pulled["run_dir"])
    return (pd.read_parquet(root / "history.parquet"), pd.read_parquet(root / "holdout.parquet"),
            pd.read_parquet(root / "catalogue.parquet"))


@pytest.mark.slow
def test_nan_loss_is_rolled_back_by_the_scheduler_and_the_saved_model_is_finite(pulled_template, tmp_path, record_property):
    pulled = copy_cycle(pulled_template, tmp_path / "cycle")
    history, window, catalogue = frames(pulled)
    rows_before = len(history)
    result = train(history, catalogue, tmp_path / "model", SETTINGS, progress=False, plan=PLAN,
                   validate=lambda m: evaluate(m, history, window).ndcg, callbacks=[PoisonDense(step=12)])

    events = json.loads(Path(result.trace).read_text())["events"]
    rollbacks = [e for e in events if e["action"] == "rollback" and e["trigger"].startswith("nonfinite")]
    model = load_checkpoint(Path(result.checkpoint))
    nan_models = int(not all(bool(torch.isfinite(p).all()) for p in model.model.parameters()))
    report(record_property, data_lost_rows=rows_before - len(frames(pulled)[0]), bad_promotions=nan_models)
    assert rollbacks, "the NaN was not rolled back"
    assert evaluate(model, history, window).ndcg > 0


def test_without_the_scheduler_a_nan_model_is_never_written(pulled_template, tmp_path, record_property):
    pulled = copy_cycle(pulled_template, tmp_path / "cycle")
    history, _, catalogue = frames(pulled)
    with pytest.raises(PipelineError, match="non-finite weights"):
        train(history, catalogue, tmp_path / "model", SETTINGS, progress=False, callbacks=[PoisonDense(step=12)])
    written = list((tmp_path / "model").glob("**/*.pt"))
    report(record_property, data_lost_rows=0, bad_promotions=int(any(p.name == "model.pt" for p in written)))
    assert not (tmp_path / "model" / "model.pt").exists()
