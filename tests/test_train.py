"""Training under DistributedModelParallel: the fused embedding optimizer really trains.

A synthetic world where women watch genre A and men genre B: a model that learns
anything ranks the right genre first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.evaluate import evaluate
from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train import (
    init_process_group,
    load_checkpoint,
    optimizer,
    recency_draws,
    shard,
    train,
    training_examples,
)


def synthetic_world(n_users: int = 40, n_items: int = 60, per_user: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(100, 100 + n_items),
            "item_genres": ["A" if i % 2 == 0 else "B" for i in range(n_items)],
            "item_release_year": 1990,
        }
    )
    rows = []
    for u in range(n_users):
        gender = "F" if u % 2 == 0 else "M"
        pool = items[items.item_genres == ("A" if gender == "F" else "B")].item_id.to_numpy()
        for j, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((u + 1, int(item), pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(hours=j), gender))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_gender"])
    frame["user_age"], frame["user_occupation"], frame["rating"] = 30, "other", 4.0
    return frame, items


def sharded_task(encoder, lr=0.1):
    init_process_group()
    task = TwoTowerTrainTask(build_two_tower(encoder, 8, "meta"))
    dmp = shard(task, lr, torch.device("cpu"))
    return dmp, optimizer(dmp, 0.01)


def item_table(dmp) -> torch.Tensor:
    key = next(k for k in dmp.state_dict() if k.endswith("t_item_id.weight"))
    tensor = dmp.state_dict()[key]
    return (tensor.local_shards()[0].tensor if hasattr(tensor, "local_shards") else tensor).detach().clone()


def one_step(dmp, opt, encoder, history, catalogue):
    examples = training_examples(history, encoder)
    users, labels = examples.batch(np.arange(len(examples)), encoder)
    opt.zero_grad()
    loss, _ = dmp(users, encoder.item_kjt(catalogue), labels)
    loss.backward()
    opt.step()


def test_fused_optimizer_owns_the_embedding_tables():
    history, catalogue = synthetic_world()
    dmp, _ = sharded_task(FeatureEncoder.fit(history, catalogue))
    assert len(dmp.fused_optimizer.param_groups) > 0
    kernels = {str(s.compute_kernel) for plan in dmp.plan.plan.values() for s in plan.values()}
    assert kernels == {"fused"}


def test_embeddings_move_and_a_larger_rate_moves_them_more():
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    dmp, opt = sharded_task(encoder)
    before = item_table(dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    small = (item_table(dmp) - before).norm()
    assert small > 0, "embedding rows did not move"

    for group in dmp.fused_optimizer.param_groups:
        group["lr"] *= 10
    before = item_table(dmp)
    one_step(dmp, opt, encoder, history, catalogue)
    large = (item_table(dmp) - before).norm()
    assert large > 3 * small, f"update {large:.4g} did not grow with the rate (was {small:.4g})"


def test_train_learns_the_genre_rule_and_checkpoint_round_trips(tmp_path):
    history, catalogue = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    settings = TrainSettings(embedding_dim=8, epochs=8, batch_size=64, seed=0)
    result = train(history, catalogue, tmp_path, settings, progress=False)

    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.n_samples == len(history)
    recommender = load_checkpoint(tmp_path / "model.pt")
    users = holdout.drop_duplicates("user_id")
    scores = recommender.score(users)
    top = recommender.catalogue.item_genres.to_numpy()[scores.argmax(dim=1).numpy()]
    expected = np.where(users.user_gender.to_numpy() == "F", "A", "B")
    assert (top == expected).mean() >= 0.9
    assert evaluate(recommender, history, holdout, k=5).ndcg > 0.1  # random ranking scores ~0.08


def test_training_is_deterministic_for_a_seed(tmp_path):
    history, catalogue = synthetic_world()
    settings = TrainSettings(embedding_dim=8, epochs=2, batch_size=64, seed=3)
    a = train(history, catalogue, tmp_path / "a", settings, progress=False)
    b = train(history, catalogue, tmp_path / "b", settings, progress=False)
    assert a.epoch_losses == pytest.approx(b.epoch_losses)


def test_empty_history_is_refused_with_a_clear_error(tmp_path):
    from recsys_retrain.errors import DataError

    _, catalogue = synthetic_world()
    empty = synthetic_world()[0].iloc[:0]
    with pytest.raises(DataError, match="training window is empty"):
        train(empty, catalogue, tmp_path, TrainSettings(), progress=False)


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


def test_recency_draws_keep_the_epoch_size_and_favour_recent_weeks():
    period = np.repeat([10, 11, 12, 13], 100)
    draws = recency_draws(period, half_life_days=7.0)
    assert recency_draws(period, None) is None
    assert sum(draws.values()) == pytest.approx(len(period), abs=4)
    assert draws[13] == pytest.approx(2 * draws[12], abs=1) and draws[12] == pytest.approx(2 * draws[11], abs=1)
    assert draws[13] > 100 > draws[10] >= 1  # the newest week is drawn more than once, the oldest less


def test_weighted_batches_draw_each_period_as_often_as_asked_and_unweighted_ones_each_example_once():
    history, catalogue = synthetic_world()
    history["timestamp"] += pd.to_timedelta(np.arange(len(history)) % 3 * 7, unit="D")  # three weeks
    examples = training_examples(history, FeatureEncoder.fit(history, catalogue))
    once = np.concatenate(examples.batches(64, np.random.default_rng(0)))
    assert sorted(once) == list(range(len(examples)))
    draws = recency_draws(examples.period, half_life_days=7.0)
    drawn = np.concatenate(examples.batches(64, np.random.default_rng(0), draws))
    weeks, counts = np.unique(examples.period[drawn], return_counts=True)
    assert dict(zip(weeks.tolist(), counts.tolist())) == draws


def taste_change_world(n_users: int = 40, n_items: int = 60, weeks: int = 8, changed_from: int = 6, per_week: int = 3):
    """Women watch genre A and men genre B, until week ``changed_from``, when both swap."""
    rng = np.random.default_rng(0)
    items = synthetic_world(n_items=n_items)[1]
    rows = []
    for u in range(n_users):
        gender = "F" if u % 2 == 0 else "M"
        for week in range(weeks):
            genre = "A" if (gender == "F") != (week >= changed_from) else "B"
            for j, item in enumerate(rng.choice(items[items.item_genres == genre].item_id.to_numpy(), per_week, replace=False)):
                when = pd.Timestamp("2020-01-06", tz="UTC") + pd.Timedelta(days=7 * week + 2 * j, hours=u % 24)
                rows.append((u + 1, int(item), when, gender))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_gender"])
    frame["user_age"], frame["user_occupation"], frame["rating"] = 30, "other", 4.0
    return frame, items


def test_a_recency_half_life_follows_a_changed_taste_where_uniform_training_keeps_the_old_one(tmp_path):
    history, catalogue = taste_change_world()
    users = history.drop_duplicates("user_id")
    now = np.where(users["user_gender"].to_numpy() == "F", "B", "A")  # the taste of the last two weeks

    def share_following_the_new_taste(half_life: float | None, out: Path) -> float:
        settings = TrainSettings(embedding_dim=8, epochs=4, batch_size=64, seed=0, recency_half_life=half_life)
        recommender = load_checkpoint(Path(train(history, catalogue, out, settings, progress=False).checkpoint))
        top = recommender.catalogue.item_genres.to_numpy()[recommender.score(users).argmax(dim=1).numpy()]
        return float((top == now).mean())

    uniform = share_following_the_new_taste(None, tmp_path / "uniform")
    recent = share_following_the_new_taste(7.0, tmp_path / "recent")
    assert uniform <= 0.3 and recent >= 0.7
