"""recsys_retrain.timeline: which weeks the replay runs, what it schedules and injects, and how a week is read back.

The replay itself (all DAGs over real weeks) runs in tests/test_integration.py through
the ``retrain demo`` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from recsys_retrain import timeline
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train

FIRST, LAST = pd.Timestamp("1997-09-20 03:05", tz="UTC"), pd.Timestamp("1998-04-22 23:10", tz="UTC")


def test_the_default_timeline_is_every_week_of_movielens_after_two_weeks_of_history():
    starts = timeline.window_starts(FIRST, LAST, timeline.TimelineConfig())
    assert len(starts) == 29 and str(starts[0].date()) == "1997-10-06" and str(starts[-1].date()) == "1998-04-20"
    assert all(b - a == timeline.WEEK for a, b in zip(starts, starts[1:]))
    assert len(timeline.window_starts(FIRST, LAST, timeline.TimelineConfig(weeks=3))) == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (timeline.TimelineConfig(start="1997-09-01"), "leaves no history"),
        (timeline.TimelineConfig(start="1998-06-01"), "after the last event"),
        (timeline.TimelineConfig(every=-1), "every must be >= 0"),
        (timeline.TimelineConfig(weeks=0), "weeks must be >= 1"),
    ],
)
def test_a_bad_timeline_fails_with_one_line(config, message):
    with pytest.raises(PipelineError, match=message) as err:
        timeline.window_starts(FIRST, LAST, config)
    assert "\n" not in str(err.value)


def test_the_schedule_trains_the_first_week_then_every_nth():
    assert [i for i in range(13) if timeline.scheduled(i, 6)] == [0, 6, 12]
    assert [i for i in range(5) if timeline.scheduled(i, 0)] == [0]
    assert all(timeline.scheduled(i, 1) for i in range(4))


def test_the_default_injections_fall_on_replayed_weeks_apart_from_scheduled_retrains():
    c = timeline.TimelineConfig()
    starts = timeline.window_starts(FIRST, LAST, c)
    drift_week, bad_week = starts.index(pd.Timestamp(c.drift_at, tz="UTC")), starts.index(pd.Timestamp(c.bad_model_at, tz="UTC"))
    # the monitor needs two windows after the bad model without a scheduled retrain to revert it
    assert not any(timeline.scheduled(i, c.every) for i in (bad_week + 1, bad_week + 2))
    assert drift_week < bad_week


def test_the_drift_event_rewrites_a_week_into_events_ingest_accepts(movielens):
    inter = movielens.interactions
    week = inter[(inter["timestamp"] >= "1998-01-12") & (inter["timestamp"] < "1998-01-19")]
    drifted = timeline.drift_event(week, movielens, seed=0)
    assert list(drifted.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert not drifted.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert 0.95 * len(week) <= len(drifted) <= len(week)
    assert drifted["rating"].mean() > week["rating"].mean() + 0.2  # rating inflation
    assert (drifted["item_id"].value_counts().head(10).sum() / len(drifted)) > (week["item_id"].value_counts().head(10).sum() / len(week))
    assert timeline.drift_event(week, movielens, seed=0).equals(drifted)  # seeded


def test_the_bad_model_is_the_model_with_its_item_embeddings_randomised(tmp_path):
    from tests.train.worlds import synthetic_world

    history, items = synthetic_world()
    result = train(history, items, tmp_path / "m", TrainSettings(epochs=1, embedding_dim=8), progress=False)
    model = load_checkpoint(Path(result.checkpoint))
    bad = timeline.corrupt_item_tower(model, seed=0)
    for name, good in model.model.item_ebc.embedding_bags.items():
        bad_table = bad.model.item_ebc.embedding_bags[name].weight
        assert good.weight.shape == bad_table.shape and not torch.allclose(good.weight, bad_table), name
        assert float(bad_table.std()) == pytest.approx(float(good.weight.std()), rel=0.35), name
    for name, table in model.model.user_ebc.embedding_bags.items():  # the user tower is untouched
        assert torch.equal(table.weight, bad.model.user_ebc.embedding_bags[name].weight)


def test_a_week_is_read_back_from_the_files_its_runs_wrote(tmp_path):
    run = tmp_path / "19980112-19980119"
    (run / "drift").mkdir(parents=True)
    verdict = {"severity": "major", "current_rows": 3000, "signals": [{"name": "genre", "drifted": True}, {"name": "rating", "drifted": False}]}
    (run / "drift" / "drift.json").write_text(json.dumps({"verdict": verdict}))
    (run / "trigger.json").write_text(json.dumps({"severity": "major", "retrain": True, "reason": "drift major"}))
    (run / "summary.json").write_text(json.dumps({"version": 3, "promoted": True, "challenger_ndcg": 0.3, "reason": "better"}))
    (run / "served.json").write_text(json.dumps({"version": 2, "ndcg": 0.25, "recent_pop_ndcg": 0.2, "ease_ndcg": 0.22}))
    (run / "monitor.json").write_text(json.dumps({"reverted": False, "reason": "no pair"}))
    week = timeline.week_result(run, "w", "drift", ["drift"], {"ingest": 1.0, "drift_watch": 2.5})
    assert (week.drift, week.drifted, week.version, week.promoted, week.served_version) == ("major", ("genre",), 3, True, 2)
    assert week.seconds == 3.5 and week.reason == "better" and week.injected == ("drift",)
    assert (week.served_ndcg, week.recent_pop_ndcg, week.ease_ndcg) == (0.25, 0.2, 0.22)
    assert timeline.WeekResult.from_dict(json.loads(json.dumps(week.to_dict()))) == week
    untrained = timeline.week_result(run, "w", None, [], {})
    assert untrained.version is None and not untrained.promoted and untrained.reason == "drift major"
