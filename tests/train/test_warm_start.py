"""Warm start: the champion's rows survive the resize bit for bit, matched by raw id; new rows train.

The champion knows users 1..40 and items 100..159 (``synthetic_world``). New data brings
new users and items, some with ids between the old ones, so the new encoder moves old
ids to other rows; the rows must follow the ids. ``train(init=champion)`` continues
from those weights: on MovieLens its first epoch starts at the champion's level.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_retrain.data.load import RawData
from recsys_retrain.errors import PipelineError
from recsys_retrain.evaluate import evaluate
from recsys_retrain.model import PRIOR_INIT, FeatureEncoder, TwoTowerTrainTask, build_two_tower
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.distributed import init_process_group, load_tower, sharded_model, unsharded
from recsys_retrain.train.examples import training_examples
from recsys_retrain.train.hooks import Callback
from recsys_retrain.train.loop import train
from recsys_retrain.train.warm_start import check_embedding_dim, row_map, union_encoder, warm_start
from tests.train.worlds import synthetic_world

DIM = 8


def weight(model, table: str) -> torch.Tensor:
    ebc = model.user_ebc if table.startswith("t_user") else model.item_ebc
    return ebc.embedding_bags[table].weight.detach()


@pytest.fixture(scope="module")
def champion():
    history, catalogue = synthetic_world()
    encoder = FeatureEncoder.fit(history, catalogue)
    torch.manual_seed(0)
    model = build_two_tower(encoder, DIM)
    with torch.no_grad():  # make every weight distinct from a fresh initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model, encoder


def grown(encoder: FeatureEncoder, users=(), items=(), genders=(), occupations=()) -> FeatureEncoder:
    """The new span's encoder: some of the champion's users, new ones, and a catalogue with new items."""
    return union_encoder(
        encoder,
        FeatureEncoder(
            user_ids=tuple(sorted(users)), item_ids=tuple(sorted({*encoder.item_ids, *items})),
            genders=tuple(genders) or encoder.genders, occupations=tuple(occupations) or encoder.occupations,
            genres=encoder.genres,
        ),
    )


class TestRowMap:
    def test_rows_are_matched_by_raw_id_with_the_unknown_row_first(self):
        old_rows, new_rows = row_map((10, 20, 30), (5, 10, 25, 30, 40))
        assert old_rows.tolist() == [0, 1, 3] and new_rows.tolist() == [0, 2, 4]

    def test_ids_the_new_vocabulary_lacks_are_left_out(self):
        old_rows, new_rows = row_map(("a", "b"), ("b",))
        assert old_rows.tolist() == [0, 2] and new_rows.tolist() == [0, 1]

    def test_an_empty_vocabulary_maps_only_the_unknown_row(self):
        assert [r.tolist() for r in row_map((), (1, 2))] == [[0], [0]]


class TestUnionEncoder:
    def test_users_and_categories_are_the_union_and_items_the_new_catalogue(self, champion):
        _, old = champion
        new = FeatureEncoder(user_ids=(3, 41), item_ids=(100, 160), genders=("X",), occupations=("pilot",))
        both = union_encoder(old, new)
        assert both.user_ids == tuple(range(1, 42))  # users 1..40 kept though only user 3 is in the new span
        assert both.item_ids == (100, 160)  # the catalogue the model will rank
        assert both.genders == ("F", "M", "X") and both.occupations == ("other", "pilot")
        assert both.genres == old.genres and both.decades == old.decades


class TestWarmStart:
    def test_every_old_row_is_bit_identical_after_the_resize(self, champion):
        model, old = champion
        # 0.5 and 20.5 interleave with the old ids, so most old users move to another row
        new = grown(old, users=(0, 7, 20.5, 45), items=(99, 130.5, 170), genders=("X",), occupations=("pilot",))
        warm = warm_start(model, old, new)
        for table, (old_vocab, new_vocab) in {
            "t_user_id": (old.user_ids, new.user_ids), "t_item_id": (old.item_ids, new.item_ids),
            "t_user_history": (old.item_ids, new.item_ids), "t_user_gender": (old.genders, new.genders),
            "t_user_occupation": (old.occupations, new.occupations), "t_item_genre": (old.genres, new.genres),
        }.items():
            for i, raw in enumerate(old_vocab):
                assert torch.equal(weight(warm, table)[new_vocab.index(raw) + 1], weight(model, table)[i + 1]), (table, raw)
            assert torch.equal(weight(warm, table)[0], weight(model, table)[0])  # the unknown row
        for table in ("t_user_age", "t_item_decade", "t_item_popularity"):  # fixed buckets: the whole table
            assert torch.equal(weight(warm, table), weight(model, table))

    def test_new_rows_start_as_in_a_fresh_model(self, champion):
        model, old = champion
        new = grown(old, users=(41, 42), items=(160, 161))
        torch.manual_seed(7)
        fresh = build_two_tower(new, DIM)
        torch.manual_seed(7)
        warm = warm_start(model, old, new)
        for table, raw_ids in (("t_user_id", (41, 42)), ("t_item_id", (160, 161))):
            vocab = new.user_ids if table == "t_user_id" else new.item_ids
            rows = [vocab.index(r) + 1 for r in raw_ids]
            assert torch.equal(weight(warm, table)[rows], weight(fresh, table)[rows])
            assert weight(warm, table)[rows].abs().sum() > 0

    def test_dense_tower_and_item_prior_weights_are_copied(self, champion):
        model, old = champion
        warm = warm_start(model, old, grown(old, users=(41,), items=(160,)))
        assert not torch.equal(model.prior.weight, torch.tensor(PRIOR_INIT))  # the champion's prior was trained
        for name in ("user_proj", "item_proj", "prior"):
            ours, theirs = getattr(warm, name).state_dict(), getattr(model, name).state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    def test_a_champion_without_the_genre_bag_starts_its_table_and_user_tower_afresh_and_keeps_the_rest(self, champion):
        model, old = champion
        older = copy.deepcopy(model)  # a champion registered before the genre bag: no table, a user tower over 5 bags
        del older.user_ebc.embedding_bags["t_user_genres"]
        older.user_proj = torch.nn.Sequential(torch.nn.Linear(5 * DIM, 2 * DIM), torch.nn.ReLU(), torch.nn.Linear(2 * DIM, DIM))
        torch.manual_seed(0)
        warm = warm_start(older, old, union_encoder(old, old))
        torch.manual_seed(0)
        fresh = build_two_tower(union_encoder(old, old), DIM)
        assert torch.equal(weight(warm, "t_user_genres"), weight(fresh, "t_user_genres"))
        assert all(torch.equal(a, b) for a, b in zip(warm.user_proj.parameters(), fresh.user_proj.parameters()))
        assert torch.equal(weight(warm, "t_user_history"), weight(model, "t_user_history"))
        assert all(torch.equal(a, b) for a, b in zip(warm.item_proj.parameters(), model.item_proj.parameters()))

    def test_with_no_new_ids_the_warm_model_is_the_champion(self, champion):
        model, old = champion
        warm = warm_start(model, old, union_encoder(old, old))
        ours, theirs = warm.state_dict(), model.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)

    def test_an_item_that_left_the_catalogue_loses_its_row_and_the_others_keep_theirs(self, champion):
        model, old = champion
        new = union_encoder(old, FeatureEncoder(user_ids=(1,), item_ids=old.item_ids[1:], genders=old.genders,
                                                occupations=old.occupations, genres=old.genres))
        warm = warm_start(model, old, new)
        assert weight(warm, "t_item_id").shape[0] == weight(model, "t_item_id").shape[0] - 1
        assert torch.equal(weight(warm, "t_item_id")[1:], weight(model, "t_item_id")[2:])

    def test_new_rows_train_and_rows_outside_the_batch_stay_put(self, champion):
        model, old = champion
        history, catalogue = synthetic_world(n_users=10, seed=3)
        history = history.assign(user_id=history["user_id"] + 40)  # users 41..50, all new
        new = union_encoder(old, FeatureEncoder.fit(history, catalogue))
        warm = warm_start(model, old, new)
        before = {t: weight(warm, t).clone() for t in ("t_user_id", "t_item_id")}
        task = TwoTowerTrainTask(warm)
        opt = torch.optim.SGD(warm.parameters(), lr=0.01)
        examples = training_examples(history, new)
        for _ in range(3):
            users, labels = examples.batch(np.arange(len(examples)), new)
            opt.zero_grad()
            task(users, new.item_kjt(catalogue), labels)[0].backward()
            opt.step()
        new_rows = [new.user_ids.index(u) + 1 for u in range(41, 51)]
        old_rows = [new.user_ids.index(u) + 1 for u in range(1, 41)]
        moved = (weight(warm, "t_user_id")[new_rows] - before["t_user_id"][new_rows]).abs().sum(dim=1)
        assert torch.isfinite(moved).all() and (moved > 0).all()
        assert torch.equal(weight(warm, "t_user_id")[old_rows], before["t_user_id"][old_rows])


class TestShardedLoad:
    def test_the_sharded_model_holds_the_warm_weights_exactly(self, champion):
        model, old = champion
        new = grown(old, users=(41,), items=(160,))
        warm = warm_start(model, old, new)
        init_process_group()
        dmp, _ = sharded_model(new, TrainSettings(embedding_dim=DIM), torch.device("cpu"))
        load_tower(dmp, warm)
        catalogue = pd.DataFrame({"item_id": list(new.item_ids), "item_genres": "A", "item_release_year": 1990})
        gathered = unsharded(dmp, new, catalogue, np.zeros(len(catalogue)), DIM).model.state_dict()
        assert all(torch.equal(gathered[k], v) for k, v in warm.state_dict().items())


def test_a_champion_of_another_embedding_size_is_refused_in_one_line(champion):
    model, _ = champion
    check_embedding_dim(model, DIM)
    with pytest.raises(PipelineError, match="embeddings are 8 wide, this run's settings ask for 16"):
        check_embedding_dim(model, 16)


class StepLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_step(self, signals, optimizer):
        self.losses.append(signals.loss)


def user_rows(recommender, user_ids) -> torch.Tensor:
    rows = [recommender.encoder.user_ids.index(u) + 1 for u in user_ids]
    return weight(recommender.model, "t_user_id")[rows]


class TestTrainFromTheChampion:
    @pytest.fixture(scope="class")
    def runs(self, tmp_path_factory):
        tmp = tmp_path_factory.mktemp("warm")
        history, catalogue = synthetic_world()
        settings = TrainSettings(embedding_dim=DIM, epochs=2, batch_size=64, seed=0)
        champion = load_checkpoint(Path(train(history, catalogue, tmp / "champion", settings, progress=False).checkpoint))
        later, _ = synthetic_world(seed=2)
        later = later.assign(user_id=later["user_id"] + 20)  # users 21..40 return, 41..60 are new
        one = settings.model_copy(update={"epochs": 1})
        warm = load_checkpoint(Path(train(later, catalogue, tmp / "warm", one, progress=False, init=champion).checkpoint))
        return champion, warm

    def test_the_encoder_is_the_union_and_absent_users_keep_their_rows_bit_for_bit(self, runs):
        champion, warm = runs
        assert warm.encoder.user_ids == tuple(range(1, 61))
        assert torch.equal(user_rows(warm, range(1, 21)), user_rows(champion, range(1, 21)))

    def test_returning_users_rows_and_the_dense_layers_train_on(self, runs):
        champion, warm = runs
        moved = (user_rows(warm, range(21, 41)) - user_rows(champion, range(21, 41))).abs().sum(dim=1)
        assert (moved > 0).all()
        assert not torch.equal(warm.model.user_proj[0].weight, champion.model.user_proj[0].weight)

    def test_a_champion_of_another_embedding_size_stops_the_run_before_it_starts(self, runs, tmp_path):
        champion, _ = runs
        history, catalogue = synthetic_world()
        with pytest.raises(PipelineError, match="cannot warm-start"):
            train(history, catalogue, tmp_path, TrainSettings(embedding_dim=16), progress=False, init=champion)
        assert not tmp_path.joinpath("model.pt").exists()


def movielens_spans(raw: RawData):
    """One user in eight of MovieLens-100K: the champion's span (to 1998), the new span
    (from two weeks before 1998 to mid-February, as a warm update re-reads a few recent
    days), what both have seen, the later weeks of known users, and the catalogue."""
    users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    items = raw.items.rename(columns={"genres": "item_genres", "release_year": "item_release_year"})
    inter = raw.interactions.merge(users, on="user_id", how="left").sort_values("timestamp", kind="stable")
    inter = inter[inter["user_id"] % 8 == 0].reset_index(drop=True)
    t1, t2 = pd.Timestamp("1998-01-01", tz="UTC"), pd.Timestamp("1998-02-15", tz="UTC")
    old = inter[inter["timestamp"] < t1]
    new = inter[(inter["timestamp"] >= t1 - pd.Timedelta(days=14)) & (inter["timestamp"] < t2)]
    seen = inter[inter["timestamp"] < t2]
    later = inter[(inter["timestamp"] >= t2) & inter["user_id"].isin(seen["user_id"])]
    return old, new, seen, later, items[["item_id", "item_genres", "item_release_year"]]


@pytest.mark.slow
def test_a_warm_one_epoch_run_on_movielens_starts_at_the_champions_level(movielens, tmp_path):
    old, new, seen, later, catalogue = movielens_spans(movielens)
    settings = TrainSettings(embedding_dim=16, batch_size=256, epochs=3, seed=0)
    champion = load_checkpoint(Path(train(old, catalogue, tmp_path / "champion", settings, progress=False).checkpoint))
    champion_ndcg = evaluate(champion, seen, later).ndcg

    def one_epoch(name, init, rate):
        steps, scores = StepLosses(), []
        run = settings.model_copy(update={"epochs": 1, "sparse_lr": settings.sparse_lr * rate, "dense_lr": settings.dense_lr * rate})
        result = train(new, catalogue, tmp_path / name, run, progress=False, callbacks=[steps], init=init,
                       validate=lambda model: scores.append(evaluate(model, seen, later).ndcg) or scores[-1])
        return steps.losses, result.epoch_losses[0], scores[0]

    warm_steps, warm_loss, warm_ndcg = one_epoch("warm", champion, 0.25)
    scratch_steps, scratch_loss, scratch_ndcg = one_epoch("scratch", None, 1.0)

    uniform = np.log(len(catalogue))
    # A fresh model starts from recent popularity (its item prior), no longer from nothing (log N): 6.91 against
    # 7.43 here. The warm one starts from the champion's weights, and ends its epoch lower (6.90 against 7.07).
    assert scratch_steps[0] < uniform - 0.3
    assert warm_steps[0] < uniform - 0.3
    assert warm_loss < scratch_loss - 0.1
    assert warm_ndcg >= 0.9 * champion_ndcg  # one epoch at a quarter of the rate keeps the champion's level
