"""Fast checks of the training-speed benchmark's comparator and goal (no sharding, no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import torch

from recsys_retrain.model import FeatureEncoder, TwoTowerTrainTask, build_two_tower

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_train_speed", BENCH / "train_speed.py")
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)

ENCODER = FeatureEncoder(user_ids=(1, 2), item_ids=(1, 2, 3), genders=("F", "M"), occupations=("x",), genres=("Drama",))
USERS = pd.DataFrame({"user_id": [1, 2], "user_gender": ["F", "M"], "user_age": [30, 40], "user_occupation": ["x", "x"]})
ITEMS = pd.DataFrame({"item_id": [1, 2, 3], "item_genres": ["Drama", "", "Drama"], "item_release_year": [1990, 0, 1995]})


def test_the_bare_comparator_trains_the_pipeline_models_tables_towers_and_prior_to_the_same_loss():
    torch.manual_seed(0)
    tower = build_two_tower(ENCODER, dim=8)
    task, bare = TwoTowerTrainTask(tower, temperature=0.5), train_speed.BareTwoTower(tower, temperature=0.5)
    assert {n: p.shape for n, p in bare.named_parameters()} == {
        n.removeprefix("model."): p.shape for n, p in task.named_parameters()
    }
    users, items, labels = ENCODER.user_kjt(USERS), ENCODER.item_kjt(ITEMS), torch.tensor([0, 2])
    prior = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.6, 0.2], [0.2, 0.2, 0.7]]))  # [items, PRIOR_DAYS]
    expected, _ = task(users, items, labels, prior)
    tower.pooled_grad_sq.clear()
    loss = bare(users, items, prior, labels)
    loss.backward()
    assert torch.allclose(loss, expected)
    assert tower.pooled_grad_sq == {}  # none of the pipeline's gradient hooks on the bare side


def test_the_goal_is_missed_below_the_goal_ratio():
    goal = f"ratio>={train_speed.GOAL_RATIO}"
    assert train_speed.goals({"ratio": train_speed.GOAL_RATIO}) == {goal: True}
    assert train_speed.goals({"ratio": train_speed.GOAL_RATIO - 0.01}) == {goal: False}


def test_each_side_trains_every_chunk_once_and_the_first_turn_flips():
    schedule = train_speed.turns(7, 3)
    assert [(side, part.start, part.stop) for side, part in schedule] == [
        (0, 0, 3), (1, 0, 3), (1, 3, 6), (0, 3, 6), (0, 6, 7), (1, 6, 7)
    ]
    for side in (0, 1):
        assert [i for s, part in schedule if s == side for i in range(7)[part]] == list(range(7))
