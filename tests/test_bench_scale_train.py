"""Fast checks of bench/scale_train.py: the bare comparator's loss, both rates reported, the served-model check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.sampled import NegativeSampler, subset_kjt
from tests.train.worlds import taste_change_world

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_scale_train", BENCH / "scale_train.py")
scale_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_train)


def test_the_bare_loss_is_the_train_tasks_loss_with_and_without_sampled_negatives():
    history, catalogue = taste_change_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    torch.manual_seed(0)
    tower = build_two_tower(encoder, dim=8)
    task, bare = TwoTowerTrainTask(tower), scale_train.BareTwoTower(tower)
    users = encoder.user_kjt(history.drop_duplicates("user_id").head(4))
    items = encoder.item_kjt(catalogue)
    prior = torch.randn(len(catalogue), 3)
    labels = torch.tensor([0, 5, 7, 9])
    assert torch.allclose(bare(users, items, prior, labels), task(users, items, labels, prior)[0])
    rows, log_q, target = NegativeSampler(np.arange(len(catalogue)), len(catalogue), 10).draw(labels.numpy())
    sub, at = subset_kjt(items, rows), torch.from_numpy(rows)
    assert torch.allclose(bare(users, sub, prior[at], target, log_q), task(users, sub, target, prior[at], log_q)[0])


def test_both_loops_report_samples_per_second_on_the_same_batches(tmp_path):
    history, catalogue = taste_change_world()
    out = scale_train.ours_and_bare(history, catalogue, TrainSettings(embedding_dim=8, batch_size=32), tmp_path,
                                    n_batches=4, warmup=1, repeats=1, chunk=2)
    assert out["samples_per_s"] > 0 and out["bare_torchrec_samples_per_s"] > 0
    assert out["timed_batches"] == 4 and out["softmax"] == "full"
    sampled = scale_train.ours_and_bare(history, catalogue, TrainSettings(embedding_dim=8, batch_size=32,
                                        sampled_softmax_above=10, sampled_negatives=8), tmp_path / "s",
                                        n_batches=2, warmup=1, repeats=1)
    assert sampled["softmax"] == "sampled (logQ)"


def test_the_served_model_is_compared_with_recent_popularity_on_the_same_users(tmp_path):
    history, catalogue = taste_change_world(weeks=8)
    cut = history["timestamp"].max() - np.timedelta64(7, "D")
    before, week = history[history["timestamp"] <= cut], history[history["timestamp"] > cut]
    settings = Settings(home=tmp_path / "home", train={"epochs": 1, "embedding_dim": 8, "batch_size": 32})
    out = scale_train.served_vs_recent_pop(before, week, catalogue, settings, tmp_path / "run", resamples=1000)
    assert out["users"] > 0 and out["ci95"][0] <= out["model_minus_recent_pop"] <= out["ci95"][1]
    assert 0.0 <= out["blend"] <= 1.0


def test_the_taste_ceiling_ranks_a_users_clusters_first_and_is_scored_against_recent_popularity(tmp_path):
    from dataclasses import replace

    import pandas as pd

    from recsys_retrain.synthetic import MOVIELENS_FIT, load_synthetic, synthesize

    config = replace(MOVIELENS_FIT, n_events=5_000, n_users=200, n_items=300, days=60)
    folder = synthesize(config, tmp_path / "log").folder
    raw = load_synthetic(folder)
    users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    inter, items = raw.interactions.merge(users, on="user_id"), raw.items
    cut = inter["timestamp"].max() - pd.Timedelta(days=7)
    history, week = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    scorer = scale_train.TasteFromHistory(folder, items, day=config.days - 7)
    cluster = scorer.cluster[scorer.rows]
    fan = history[history["item_id"].isin(items["item_id"][cluster == 3])].head(20).assign(user_id=10_000)
    scores = scorer.score(pd.DataFrame({"user_id": [10_000, 10_001]}), fan)
    lift = (scores[0] / scores[1]).numpy()  # the fan against a cold user: the same popularity, another taste
    out_now = scorer.weight[scorer.rows] > 0  # items not out yet score 0 for everyone
    assert lift[out_now & (cluster == 3)].min() > lift[out_now & (cluster != 3)].max()
    out = scale_train.taste_ceiling(folder, history, week, items, resamples=1000)
    assert out["users"] > 0 and out["ci95"][0] <= out["minus_recent_pop"] <= out["ci95"][1]
