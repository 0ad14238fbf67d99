"""Spec of recsys_retrain.drift.check: the check a cycle runs, its inputs, the champion's prediction drift, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.drift.check import champion_scorer, check_drift
from recsys_retrain.drift.signals import SIGNALS
from recsys_retrain.errors import DataError
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, assert_no_nan, make_window, signal


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

    @pytest.mark.slow
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

    def test_missing_columns_are_a_data_error(self, reference, tmp_path):
        with pytest.raises(DataError, match="current window lacks column"):
            check_drift(reference, reference.drop(columns=["rating"]), tmp_path, DriftSettings())


class TestCli:
    @pytest.mark.slow
    def test_retrain_drift_prints_the_signals_and_the_verdict(self, tmp_path, movielens):
        import os
        import subprocess
        import sys

        from recsys_retrain.data.ingest import bootstrap_feature_repo
        from recsys_retrain.data.load import RawData
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
