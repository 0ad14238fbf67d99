"""Checkpoints: an interrupted run resumes to the same result, and a failed write is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.errors import PipelineError
from recsys_retrain.model import PRIOR_INIT, item_prior
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.blend import BLEND_GRID
from recsys_retrain.train.checkpoints import atomic_save, load_checkpoint
from recsys_retrain.train.loop import train
from tests.train.worlds import synthetic_world


class CrashAfter:
    """Stands in for a killed process: raises at the end of the given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_begin(self, optimizer):
        pass

    def on_step(self, signals, optimizer):
        pass

    def on_epoch_end(self, signals, optimizer):
        if signals.epoch == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_an_interrupted_run_resumes_from_its_last_epoch_to_the_same_result(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    settings = TrainSettings(embedding_dim=8, epochs=4, batch_size=64, seed=5)
    straight = train(history, catalogue, tmp_path / "straight", settings, progress=False)

    with pytest.raises(KeyboardInterrupt):
        train(history, catalogue, tmp_path / "crashed", settings, progress=False, callbacks=[CrashAfter(1)])
    assert (tmp_path / "crashed" / "checkpoints" / "last.rank0.pt").exists()
    assert not (tmp_path / "crashed" / "model.pt").exists()
    resumed = train(history, catalogue, tmp_path / "crashed", settings, progress=False)

    assert resumed.epoch_losses == pytest.approx(straight.epoch_losses, rel=1e-6)
    assert resumed.n_steps == straight.n_steps
    a, b = load_checkpoint(Path(straight.checkpoint)), load_checkpoint(Path(resumed.checkpoint))
    users = holdout.drop_duplicates("user_id")
    assert torch.allclose(a.score(users, history), b.score(users, history), atol=1e-5)
    assert not (tmp_path / "crashed" / "checkpoints" / "last.rank0.pt").exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    history, catalogue = synthetic_world()
    with pytest.raises(KeyboardInterrupt):
        train(history, catalogue, tmp_path, TrainSettings(embedding_dim=8, epochs=3, seed=1), progress=False,
              callbacks=[CrashAfter(0)])
    other = train(history, catalogue, tmp_path, TrainSettings(embedding_dim=8, epochs=2, seed=1), progress=False)
    assert len(other.epoch_losses) == 2 and other.n_steps > 0


def test_a_failed_write_is_one_line_and_leaves_no_partial_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the model folder should be")
    with pytest.raises(PipelineError) as err:
        atomic_save({"weights": torch.zeros(3)}, blocker / "model.pt", "model")
    assert "\n" not in str(err.value) and "could not write the model" in str(err.value)
    assert str(err.value).endswith("no model.pt was written")

    atomic_save({"weights": torch.ones(3)}, tmp_path / "model.pt", "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "model.pt"]  # no temp file left beside it
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weights"], torch.ones(3))


def test_model_pt_carries_the_trained_prior_its_features_and_the_serving_blend(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    later = holdout.assign(timestamp=holdout["timestamp"] + pd.Timedelta(days=1))
    result = train(history, catalogue, tmp_path, TrainSettings(embedding_dim=8, epochs=2, batch_size=64, seed=5),
                   progress=False, blend_holdout=later)
    loaded = load_checkpoint(Path(result.checkpoint))
    saved = torch.load(Path(result.checkpoint), weights_only=True)
    assert torch.equal(loaded.model.prior.weight, saved["model"]["prior.weight"])
    assert not torch.allclose(loaded.model.prior.weight, torch.tensor(PRIOR_INIT))  # it trained
    assert np.array_equal(loaded.prior_features, item_prior(history, catalogue.sort_values("item_id")))
    assert loaded.blend == result.blend and set(result.blend_ndcg) == {str(b) for b in BLEND_GRID}
    users = later.drop_duplicates("user_id")
    again = load_checkpoint(Path(result.checkpoint))
    assert torch.equal(loaded.score(users, history), again.score(users, history))
    assert torch.equal(loaded.score(users), again.score(users))
