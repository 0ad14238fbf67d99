"""The callback hooks see each step's loss, gradient norms and rates, and each epoch's validation."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_retrain.evaluate import evaluate
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.loop import train
from tests.train.worlds import synthetic_world


class Recorder:
    """A callback that keeps every signal and halves the dense rate after the first epoch."""

    def __init__(self):
        self.steps, self.epochs, self.began = [], [], False

    def on_train_begin(self, optimizer):
        self.began = True

    def on_step(self, signals, optimizer):
        self.steps.append(signals)

    def on_epoch_end(self, signals, optimizer):
        self.epochs.append(signals)
        for name, part in optimizer.optimizers:
            if name == "dense":
                for group in part.param_groups:
                    group["lr"] *= 0.5


def test_hooks_see_loss_gradient_norms_rates_and_validation(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    recorder = Recorder()
    settings = TrainSettings(embedding_dim=8, epochs=3, batch_size=64, dense_lr=0.01)
    result = train(
        history, catalogue, tmp_path, settings, progress=False, callbacks=[recorder],
        validate=lambda rec: evaluate(rec, history, holdout, k=5).ndcg,
    )
    assert recorder.began and len(recorder.steps) == result.n_steps
    assert all(s.dense_grad_norm > 0 and s.embedding_grad_norm > 0 for s in recorder.steps)
    assert all(np.isfinite([s.loss, s.dense_grad_norm, s.embedding_grad_norm]).all() for s in recorder.steps)
    assert [e.epoch for e in recorder.epochs] == [0, 1, 2]
    assert all(0 <= e.validation <= 1 for e in recorder.epochs)
    assert [e.loss for e in recorder.epochs] == pytest.approx(list(result.epoch_losses))
    # the rate the callback set after epoch 1 is the rate the next steps ran with
    first_of_epoch = {s.epoch: s.dense_lr for s in reversed(recorder.steps)}
    assert first_of_epoch == pytest.approx({0: 0.01, 1: 0.005, 2: 0.0025})
    assert all(s.sparse_lr == pytest.approx(settings.sparse_lr) for s in recorder.steps)
