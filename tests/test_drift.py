"""Spec of recsys_retrain.drift: designed signals, user-permutation thresholds, verdicts that can be audited.

The windows are synthetic but shaped like MovieLens-100K: 943 users and 1,682 items,
Zipf-like item popularity (popular items are recent ones), log-normal user activity,
ratings from item quality plus noise, a daily rhythm, and "|"-joined genres.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_retrain import simulate as sim
from recsys_retrain.drift import SIGNALS, DriftReport, champion_scorer, check_drift
from recsys_retrain.errors import DataError
from recsys_retrain.settings import DriftSettings

GENRES = (
    "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
OCCUPATIONS = ("student", "engineer", "educator", "programmer", "writer", "other", "none")
START = pd.Timestamp("1998-01-05", tz="UTC")


def make_world(seed: int = 0, n_users: int = 943, n_items: int = 1682) -> dict[str, pd.DataFrame]:
    """Users and items shared by every window drawn from this world."""
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n_items) + 1  # 1 = most popular
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype="int64"),
            "popularity": 1.0 / rank**0.9,
            "quality": rng.normal(3.5, 0.5, n_items),
            "item_release_year": (1998 - rank / n_items * 40 - rng.exponential(3, n_items)).astype("int64"),
            "item_genres": ["|".join(rng.choice(GENRES, rng.integers(0, 4), replace=False)) for _ in range(n_items)],
        }
    )
    items.loc[rng.random(n_items) < 0.01, "item_release_year"] = 0  # unknown year
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype="int64"),
            "activity": rng.lognormal(0, 1, n_users),
            "bias": rng.normal(0, 0.4, n_users),
            "user_age": rng.integers(7, 74, n_users).astype("int64"),
            "user_gender": rng.choice(["M", "F"], n_users, p=[0.7, 0.3]),
            "user_occupation": rng.choice(OCCUPATIONS, n_users),
        }
    )
    return {"items": items, "users": users}


def make_window(
    world: dict[str, pd.DataFrame],
    n: int,
    *,
    seed: int,
    start: pd.Timestamp = START,
    days: float = 7.0,
    rating_shift: float = 0.0,
    long_tail: bool = False,
) -> pd.DataFrame:
    """A window in the data stage's contract; ``long_tail`` turns popularity upside down."""
    rng = np.random.default_rng(seed)
    items, users = world["items"], world["users"]
    pop = items["popularity"].to_numpy()
    pop = 1.0 / pop if long_tail else pop
    item = items.iloc[rng.choice(len(items), n, p=pop / pop.sum())].reset_index(drop=True)
    act = users["activity"].to_numpy()
    user = users.iloc[rng.choice(len(users), n, p=act / act.sum())].reset_index(drop=True)
    hour_weight = 1.0 + np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False) - 2.0)
    hours = rng.choice(24, n, p=hour_weight / hour_weight.sum())
    offset = rng.integers(0, int(days), n) * 86_400 + hours * 3_600 + rng.integers(0, 3_600, n)
    noise = rng.normal(0, 0.8, n)
    window = pd.DataFrame(
        {
            "user_id": user["user_id"],
            "item_id": item["item_id"],
            "timestamp": start + pd.to_timedelta(np.minimum(offset, days * 86_400 - 1), unit="s"),
            "rating": np.clip(np.round(item["quality"] + user["bias"] + noise + rating_shift), 1, 5).astype("float64"),
            "user_age": user["user_age"],
            "user_gender": user["user_gender"],
            "user_occupation": user["user_occupation"],
            "item_genres": item["item_genres"],
            "item_release_year": item["item_release_year"],
        }
    )
    window["user_n_interactions"] = window.groupby("user_id")["item_id"].transform("size").astype("int64")
    window["item_n_interactions"] = window.groupby("item_id")["user_id"].transform("size").astype("int64")
    return window.sort_values("timestamp", ignore_index=True)


def assert_no_nan(value: object, where: str = "report") -> None:
    """Every number in a report dict is finite, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_nan(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_no_nan(v, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is {value}"


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    return make_world()


@pytest.fixture(scope="module")
def reference(world) -> pd.DataFrame:
    """Four weeks, as DriftSettings.reference_days asks."""
    return make_window(world, 12000, seed=1, days=28.0)


def signal(report: DriftReport, name: str):
    return next(s for s in report.signals if s.name == name)


NEXT = START + pd.Timedelta(days=28)


class TestVerdicts:
    def test_identical_distributions_give_no_drift(self, world, reference):
        current = make_window(world, 3000, seed=2, start=NEXT)
        report = check_drift(reference, current, None, DriftSettings())
        assert report.severity == "none", report.reason
        assert report.drifted_signals == ()
        assert all(s.tested for s in report.signals), [s.note for s in report.signals]
        assert {s.name for s in report.signals} == {s.name for s in SIGNALS}

    def test_false_alarms_stay_rare_on_exchangeable_windows(self, world):
        alarms = [
            check_drift(make_window(world, 4000, seed=100 + i, days=28.0), make_window(world, 1000, seed=200 + i, start=NEXT),
                        None, DriftSettings(permutations=300)).severity != "none"
            for i in range(15)
        ]
        assert sum(alarms) <= 2  # alpha 0.03: two alarms in 15 would already be unlucky (p 0.07)

    def test_one_strongly_drifted_signal_is_enough(self, world, reference):
        current = make_window(world, 3000, seed=3, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings())
        rating = signal(report, "rating")
        assert rating.drifted and rating.method == "wasserstein" and rating.value > rating.threshold
        assert rating.p_value < 0.01
        assert report.severity == "major", report.reason  # far above its threshold
        assert "rating" in report.reason

    def test_long_tail_shift_drifts_popularity_signals(self, world, reference):
        current = make_window(world, 3000, seed=4, start=NEXT, long_tail=True)
        report = check_drift(reference, current, None, DriftSettings())
        assert {"item_popularity_decile", "top_items_share"} <= set(report.drifted_signals)
        assert report.severity in {"minor", "major"}, report.reason

    def test_new_items_drift_the_new_and_rising_item_shares(self, world, reference):
        current = make_window(world, 3000, seed=22, start=NEXT)
        catalogue = sim.catalogue(pd.concat([reference, current]))
        influx = sim.inject(current, [sim.new_item_influx(0.05)], seed=0, items=catalogue)
        report = check_drift(reference, influx, None, DriftSettings())
        new = signal(report, "new_item_share")
        assert {"new_item_share", "rising_item_share"} <= set(report.drifted_signals), report.reason
        assert new.value > 0.05 and new.method == "share"  # a share of interactions, read as such
        quiet = signal(check_drift(reference, current, None, DriftSettings()), "new_item_share")
        assert quiet.tested and not quiet.drifted and quiet.value < new.value - 0.04

    def test_an_influx_of_new_users_drifts_new_user_share(self, world, reference):
        current = make_window(world, 3000, seed=23, start=NEXT)
        newcomers = current["user_id"].isin(current["user_id"].drop_duplicates().sample(frac=0.5, random_state=0))
        current.loc[newcomers, "user_id"] += 100_000  # half the week's users never seen before
        report = check_drift(reference, current, None, DriftSettings())
        assert "new_user_share" in report.drifted_signals, report.reason

    def test_a_short_reference_leaves_new_user_share_untested(self, world):
        reference = make_window(world, 3000, seed=24)
        current = make_window(world, 3000, seed=25, start=START + pd.Timedelta(days=7))
        users = signal(check_drift(reference, current, None, DriftSettings()), "new_user_share")
        assert not users.tested and "under twice the current window" in users.note

    def test_fewer_interactions_per_session_drift_user_activity(self, world, reference):
        current = make_window(world, 3000, seed=26, start=NEXT)
        current = current.assign(day=current["timestamp"].dt.floor("D"))
        first = ~current.duplicated(["user_id", "day"])  # keep one row of each session
        report = check_drift(reference, current[first].drop(columns="day"), None, DriftSettings())
        assert "user_activity" in report.drifted_signals, report.reason

    def test_events_lost_at_random_drift_session_pace(self, world, reference):
        current = make_window(world, 3000, seed=27, start=NEXT)
        thinned = current.iloc[::3].reset_index(drop=True)  # two rows in three never logged
        report = check_drift(reference, thinned, None, DriftSettings())
        assert "session_pace" in report.drifted_signals, report.reason
        assert "session_pace" not in check_drift(reference, current, None, DriftSettings()).drifted_signals

    def test_single_row_sessions_leave_session_pace_untested(self, world, reference):
        current = make_window(world, 3000, seed=28, start=NEXT)
        current = current[~current.assign(day=current["timestamp"].dt.floor("D")).duplicated(["user_id", "day"])]
        pace = signal(check_drift(reference, current, None, DriftSettings()), "session_pace")
        assert not pace.tested and pace.value == 0.0 and "no session_pace values in the current window" in pace.note

    def test_severity_follows_the_settings(self, world, reference):
        current = make_window(world, 3000, seed=5, start=NEXT, rating_shift=0.5)
        base = check_drift(reference, current, None, DriftSettings())
        assert base.drifted_signals and base.severity != "none"
        lenient = check_drift(reference, current, None, DriftSettings(min_drifted_signals=5, minor_share=1.0, major_share=1.0, major_ratio=1e6))
        assert lenient.severity == "none" and lenient.drifted_share == base.drifted_share
        strict = check_drift(reference, current, None, DriftSettings(major_share=0.05))
        assert strict.severity == "major"
        floored = check_drift(reference, current, None, DriftSettings(stattest_threshold=10.0))
        assert floored.severity == "none" and all(s.threshold >= 10.0 for s in floored.signals)

    def test_every_decision_carries_its_numbers(self, world, reference):
        current = make_window(world, 2000, seed=6, start=NEXT, rating_shift=0.7)
        settings = DriftSettings(floors={"rating": 0.05})
        report = check_drift(reference, current, None, settings)
        tested = [s for s in report.signals if s.tested]
        for s in tested:
            assert s.drifted == (s.value > s.threshold), s
            assert 0 < s.p_value <= 1 and s.n_reference > 0 and s.n_current > 0
        assert signal(report, "rating").threshold >= 0.05
        assert report.drifted_share == pytest.approx(sum(s.drifted for s in tested) / len(tested))
        assert (report.reference_rows, report.current_rows) == (12000, 2000)
        assert str(len(report.drifted_signals)) in report.reason
        assert (report.alpha, report.permutations) == (settings.alpha, settings.permutations)

    def test_checks_are_deterministic(self, world, reference):
        current = make_window(world, 2000, seed=15, start=NEXT)
        assert check_drift(reference, current, None, DriftSettings()) == check_drift(reference, current, None, DriftSettings())

    def test_method_overrides_are_checked(self, world, reference):
        current = make_window(world, 2000, seed=16, start=NEXT)
        report = check_drift(reference, current, None, DriftSettings(methods={"rating": "psi"}))
        assert signal(report, "rating").method == "psi"
        with pytest.raises(ValueError, match="categorical"):
            check_drift(reference, current, None, DriftSettings(methods={"genre": "wasserstein"}))
        with pytest.raises(ValueError, match="new_item_share is fixed"):
            check_drift(reference, current, None, DriftSettings(methods={"new_item_share": "psi"}))

    def test_big_windows_pool_users_into_groups(self, world, reference):
        current = make_window(world, 3000, seed=17, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings(max_units=50))
        assert "rating" in report.drifted_signals
        assert signal(report, "rating").n_reference > 50  # users are counted, groups are tested


class TestPredictionDrift:
    def test_shifted_scores_drift_and_equal_scores_do_not(self, world, reference):
        current = make_window(world, 3000, seed=18, start=NEXT)
        rng = np.random.default_rng(0)
        ref_scores = rng.normal(0, 1, len(reference))
        same = check_drift(reference, current, None, DriftSettings(), reference_scores=ref_scores, current_scores=rng.normal(0, 1, len(current)))
        assert signal(same, "prediction_score").tested and not signal(same, "prediction_score").drifted
        moved = check_drift(reference, current, None, DriftSettings(), reference_scores=ref_scores, current_scores=rng.normal(0.5, 1, len(current)))
        assert "prediction_score" in moved.drifted_signals

    def test_scores_must_match_the_rows(self, reference, world):
        current = make_window(world, 100, seed=19, start=NEXT)
        with pytest.raises(DataError, match="current_scores has 3 values for 100 rows"):
            check_drift(reference, current, None, DriftSettings(), reference_scores=np.zeros(len(reference)), current_scores=np.zeros(3))
        one_side = check_drift(reference, current, None, DriftSettings(), reference_scores=np.zeros(len(reference)))
        assert not signal(one_side, "prediction_score").tested
        assert "scores given for one window only" in signal(one_side, "prediction_score").note


    def test_the_champion_scores_what_each_row_consumed(self, world, reference, tmp_path):
        from recsys_retrain.settings import TrainSettings
        from recsys_retrain.train.checkpoints import load_checkpoint
        from recsys_retrain.train.loop import train

        catalogue = world["items"][["item_id", "item_genres", "item_release_year"]]
        train(reference, catalogue, tmp_path, TrainSettings(embedding_dim=8, epochs=1, batch_size=1024), progress=False)
        model = load_checkpoint(tmp_path / "model.pt")
        current = make_window(world, 2000, seed=27, start=NEXT)
        current.loc[current.index[:10], "item_id"] = 99_999  # an item the champion never saw
        scores = champion_scorer(model)(current)
        assert np.isnan(scores[:10]).all() and np.isfinite(scores[10:]).all()
        users = current.drop_duplicates("user_id").reset_index(drop=True)
        full = model.score(users, None).numpy()
        row = 10
        u = users.index[users["user_id"] == current["user_id"].iloc[row]][0]
        i = model.catalogue.index[model.catalogue["item_id"] == current["item_id"].iloc[row]][0]
        assert scores[row] == pytest.approx(float(full[u, i]), rel=1e-5)
        same = check_drift(reference, current, None, DriftSettings(), champion_scorer(model))
        assert signal(same, "prediction_score").tested and not signal(same, "prediction_score").drifted
        tail = check_drift(reference, make_window(world, 2000, seed=28, start=NEXT, long_tail=True), None, DriftSettings(), champion_scorer(model))
        assert "prediction_score" in tail.drifted_signals, tail.reason  # the champion scores the new favourites low

    def test_a_scorer_must_give_one_score_per_row(self, world, reference):
        current = make_window(world, 100, seed=29, start=NEXT)
        with pytest.raises(DataError, match="scorer returned shape"):
            check_drift(reference, current, None, DriftSettings(), lambda w: np.zeros(3))


class TestOutputs:
    def test_round_trip_through_json(self, world, reference, tmp_path):
        current = make_window(world, 3000, seed=7, start=NEXT, rating_shift=1.0)
        report = check_drift(reference, current, None, DriftSettings())
        again = DriftReport.from_dict(json.loads(json.dumps(report.to_dict())))
        assert again == report

    def test_files_are_written_whole_and_only_with_an_out_dir(self, world, reference, tmp_path):
        out = tmp_path / "run-1" / "drift"
        current = make_window(world, 3000, seed=8, start=NEXT)
        report = check_drift(reference, current, out, DriftSettings())
        assert Path(report.json_path) == out / "drift.json"
        assert Path(report.html_path) == out / "drift.html"
        payload = json.loads(Path(report.json_path).read_text())
        assert DriftReport.from_dict(payload["verdict"]).signals == report.signals
        drawn = {m["config"]["column"] for m in payload["evidently"]["metrics"]}
        assert drawn == {s.name for s in report.signals if s.tested} - {"rising_item_share"}  # no per-row reference label
        assert "<html" in Path(report.html_path).read_text()[:2000].lower()
        assert sorted(p.name for p in out.iterdir()) == ["drift.html", "drift.json"]  # no temp files left
        quiet = check_drift(reference, current, None, DriftSettings())
        assert quiet.json_path == quiet.html_path == "" and quiet.signals == report.signals


class TestDegenerateInputs:
    @pytest.mark.parametrize("empty_side", ["reference", "current"])
    def test_an_empty_window_gives_none_with_a_reason(self, reference, tmp_path, empty_side):
        windows = {"reference": reference, "current": reference.iloc[:0]}
        if empty_side == "reference":
            windows = {"reference": reference.iloc[:0], "current": reference}
        report = check_drift(windows["reference"], windows["current"], tmp_path, DriftSettings())
        assert report.severity == "none"
        assert f"{empty_side} window empty" in report.reason
        assert report.signals == () and report.drifted_share == 0.0
        assert report.json_path == report.html_path == ""
        assert_no_nan(report.to_dict())

    def test_constant_columns_and_single_categories_stay_finite(self, world, tmp_path):
        reference = make_window(world, 2000, seed=9, days=28.0)
        current = make_window(world, 500, seed=10, start=NEXT)
        for w in (reference, current):
            w["rating"] = 4.0
            w["item_id"] = 7  # one item: one popularity decile, one genre set
            w["item_genres"] = ""
            w["user_age"] = 30
        current["item_release_year"] = 0  # all unknown -> signal cannot be tested
        report = check_drift(reference, current, tmp_path, DriftSettings())
        assert_no_nan(report.to_dict())
        one_item = ("item_popularity_decile", "top_items_share", "rising_item_share", "new_item_share")
        for name in ("rating", "user_age", "genre", *one_item):
            assert signal(report, name).tested and not signal(report, name).drifted, name
            assert signal(report, name).value == pytest.approx(0.0, abs=1e-9), name
        year = signal(report, "item_release_year")
        assert not year.tested and "no item_release_year values in the current window" in year.note
        assert report.severity == "none", report.reason

    def test_a_constant_reference_against_a_varied_window_is_finite(self, world):
        reference = make_window(world, 500, seed=20)
        reference["rating"] = 3.0
        current = make_window(world, 500, seed=21, start=NEXT)
        rating = signal(check_drift(reference, current, None, DriftSettings()), "rating")
        assert rating.drifted and 0 < rating.value < 5  # pooled spread, not the reference's zero spread
        assert_no_nan(asdict_safe(rating))

    def test_daily_windows_do_not_test_the_weekly_rhythm(self, world):
        reference = make_window(world, 1000, seed=11, days=1)
        current = make_window(world, 1000, seed=12, start=START + pd.Timedelta(days=1), days=1)
        report = check_drift(reference, current, None, DriftSettings())
        assert not signal(report, "day_of_week").tested
        assert signal(report, "hour_of_day").tested
        assert_no_nan(report.to_dict())

    @pytest.mark.parametrize("n", [1, 5])
    def test_windows_with_too_few_users_are_not_tested(self, world, n):
        reference = make_window(world, n, seed=13)
        current = make_window(world, n, seed=14, start=NEXT, rating_shift=2.0)
        report = check_drift(reference, current, None, DriftSettings())
        assert_no_nan(report.to_dict())
        assert report.severity == "none" and not any(s.tested for s in report.signals)
        assert all("min_users" in s.note or "no " in s.note or "spans" in s.note for s in report.signals)
        assert report.reason == "no signal could be tested: no drift declared"

    def test_missing_columns_are_a_data_error(self, reference, tmp_path):
        with pytest.raises(DataError, match="current window lacks column"):
            check_drift(reference, reference.drop(columns=["rating"]), tmp_path, DriftSettings())


def asdict_safe(result) -> dict:
    from dataclasses import asdict

    return asdict(result)


class TestCli:
    def test_retrain_drift_prints_the_signals_and_the_verdict(self, tmp_path, movielens):
        import os
        import subprocess
        import sys

        from recsys_retrain.data import RawData, bootstrap_feature_repo
        from tests.conftest import copy_feature_repo

        ts = movielens.interactions["timestamp"]
        inter = movielens.interactions[(ts >= pd.Timestamp("1997-09-29", tz="UTC")) & (ts < pd.Timestamp("1997-11-03", tz="UTC"))]
        bootstrap_feature_repo(RawData(inter, movielens.users, movielens.items), copy_feature_repo(tmp_path / "features"))
        env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_FEATURE_REPO": str(tmp_path / "features")}
        retrain = [str(Path(sys.executable).with_name("retrain")), "drift", "--reference", "1997-09-29:1997-10-27",
                   "--current", "1997-10-27:1997-11-03"]
        done = subprocess.run([*retrain, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        for name in (s.name for s in SIGNALS):
            assert name in done.stdout, name
        assert "verdict:" in done.stdout and (tmp_path / "out" / "drift.html").exists()
        refused = subprocess.run([*retrain, "--champion"], env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and "no champion" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
