"""The refit through the window's end and its sanity check, as plain functions of frames and files (no registry)."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch

from recsys_retrain.errors import PipelineError
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train
from recsys_retrain.train.refit import (
    gated_epochs,
    plan_of,
    refit_model,
    refit_settings,
    sanity_check,
)
from tests.train.worlds import taste_change_world

TINY = {"epochs": 3, "embedding_dim": 8, "batch_size": 64, "refit_epochs": 2, "refit_recent_days": 14.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Seven weeks of history, the eighth as the window (with one user the history never saw), a gated model."""
    frame, items = taste_change_world(weeks=8, changed_from=8)
    start = pd.Timestamp("2020-01-06", tz="UTC") + pd.Timedelta(days=49)
    newcomer = frame[frame["timestamp"] >= start].head(3).assign(user_id=999)
    frame = pd.concat([frame, newcomer], ignore_index=True)
    history, window = frame[frame["timestamp"] < start], frame[frame["timestamp"] >= start]
    s = Settings(home=tmp_path_factory.mktemp("home"), train=TINY, gate={"refit_tolerance": 0.5})
    gated = train(history, items, tmp_path_factory.mktemp("gated"), s.train, progress=False)
    return history, window, items, gated, s


def test_a_warm_refit_continues_from_the_gated_weights_on_the_window_and_its_recent_days(world, tmp_path):
    history, window, items, gated, s = world
    result = refit_model(history, window, items, gated.checkpoint, tmp_path / "refit", s, "warm")
    assert (result.mode, result.epochs) == ("warm", s.train.refit_epochs)
    data = pd.read_parquet(tmp_path / "refit" / "data.parquet")
    assert data["timestamp"].min() >= window["timestamp"].min() - pd.Timedelta(days=14)  # refit_recent_days
    assert data["timestamp"].max() == window["timestamp"].max() and len(data) == result.rows
    assert len(data) < len(history) + len(window)
    assert result.data_end == window["timestamp"].max().isoformat()
    refit, before = load_checkpoint(tmp_path / "refit" / "model.pt"), load_checkpoint(gated.checkpoint)
    assert 999 in refit.encoder.user_ids and 999 not in before.encoder.user_ids  # the window's newcomer has a row
    assert set(before.encoder.user_ids) <= set(refit.encoder.user_ids)  # and nobody lost theirs
    assert refit.blend == before.blend  # the served blend with recent popularity is the gated one's


def test_a_refit_keeps_the_gated_blend_and_its_features_reach_back_before_its_span(world, tmp_path):
    history, window, items, gated, s = world
    blended = load_checkpoint(gated.checkpoint)
    ckpt = torch.load(gated.checkpoint, weights_only=False)
    ckpt["blend"] = 0.9
    torch.save(ckpt, tmp_path / "blended.pt")
    assert load_checkpoint(tmp_path / "blended.pt").blend == 0.9 != blended.blend
    for mode in ("warm", "scratch"):
        result = refit_model(history, window, items, tmp_path / "blended.pt", tmp_path / mode, s, mode)
        assert load_checkpoint(result.checkpoint).blend == 0.9, mode


def test_a_scratch_refit_trains_the_gated_recipe_on_history_and_window(world, tmp_path):
    history, window, items, gated, s = world
    result = refit_model(history, window, items, gated.checkpoint, tmp_path / "refit", s, "scratch")
    assert result.epochs == len(gated.epoch_losses) == gated_epochs(gated.checkpoint, None, s.train)
    assert result.rows == len(history) + len(window)
    assert result.data_start == history["timestamp"].min().isoformat()


def test_off_serves_the_gated_checkpoint_and_an_unknown_mode_is_refused(world, tmp_path):
    history, window, items, gated, s = world
    result = refit_model(history, window, items, gated.checkpoint, tmp_path / "refit", s, "off")
    assert (result.checkpoint, result.epochs, result.rows) == (str(gated.checkpoint), 0, 0)
    assert not (tmp_path / "refit").exists()
    with pytest.raises(PipelineError, match="refit mode 'later'"):
        refit_model(history, window, items, gated.checkpoint, tmp_path / "refit", s, "later")


def test_a_scratch_refit_follows_the_plan_and_a_warm_one_the_train_sections_rates_lowered():
    plan = SchedulePlan(dense_lr=0.02, sparse_lr=0.08, batch_size=256, max_epochs=9, recency_half_life=30.0)
    t = TrainSettings(refit_rate_scale=0.5, dense_lr=0.01, sparse_lr=0.04, batch_size=512)
    warm, scratch = refit_settings(t, plan, "warm", 2), refit_settings(t, plan, "scratch", 7)
    assert (warm.dense_lr, warm.sparse_lr, warm.batch_size, warm.epochs) == (0.005, 0.02, 512, 2)
    assert (scratch.dense_lr, scratch.sparse_lr, scratch.epochs, scratch.recency_half_life) == (0.02, 0.08, 7, 30.0)
    assert plan_of({"policy": "adaptive", "plan": plan.to_dict()}) == plan_of(plan.to_dict())
    assert plan_of({"policy": "static", "plan": None}) is None and plan_of(None) is None


def test_the_gated_epoch_count_is_the_best_epoch_when_the_scheduler_kept_it(tmp_path):
    (tmp_path / "trace.json").write_text(json.dumps({"epochs": [{}] * 6, "controller": {"best_epoch": 4}}))
    assert gated_epochs(tmp_path / "model.pt", None, TrainSettings()) == 4
    assert gated_epochs(tmp_path / "none" / "model.pt", SchedulePlan(max_epochs=5), TrainSettings()) == 5


class TestSanityCheck:
    def test_a_sound_refit_passes_and_says_it_is_in_sample(self, world, tmp_path):
        history, window, items, gated, s = world
        result = refit_model(history, window, items, gated.checkpoint, tmp_path / "refit", s, "warm")
        check = sanity_check(load_checkpoint(result.checkpoint), load_checkpoint(gated.checkpoint), history, window, s)
        assert check.ok and "in-sample" in check.reason and "not an evaluation" in check.reason
        assert math.isfinite(check.refit_ndcg) and math.isfinite(check.gated_ndcg)

    def test_a_refit_with_a_nan_weight_never_serves(self, world):
        history, window, _, gated, s = world
        broken = load_checkpoint(gated.checkpoint)
        with torch.no_grad():
            broken.model.item_ebc.embedding_bags["t_item_id"].weight[1, 0] = math.nan
        check = sanity_check(broken, load_checkpoint(gated.checkpoint), history, window, s)
        assert not check.ok and "non-finite" in check.reason and math.isnan(check.refit_ndcg)

    def test_a_refit_far_below_the_gated_model_on_the_window_fails_with_its_numbers(self, world):
        history, window, _, gated, s = world
        model = load_checkpoint(gated.checkpoint)
        scrambled = copy.deepcopy(model)
        with torch.no_grad():
            for param in scrambled.model.item_proj[-1].parameters():
                param.mul_(-1.0)  # item vectors negated: every user's ranking turned upside down
        strict = s.model_copy(update={"gate": s.gate.model_copy(update={"refit_tolerance": 0.0})})
        check = sanity_check(scrambled, model, history, window, strict)
        assert check.refit_ndcg < check.gated_ndcg
        assert not check.ok and "gate.refit_tolerance 0" in check.reason and f"{check.gated_ndcg:.4f}" in check.reason
        assert sanity_check(model, model, history, window, strict).ok  # no shortfall at all passes at tolerance 0
