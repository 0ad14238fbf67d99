"""Spec of recsys_retrain.synthetic: a log the pipeline ingests, fit to MovieLens-100K, with its drifts' ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_retrain.data.validation import check_events
from recsys_retrain.settings import DataSettings
from recsys_retrain.synthetic import (
    MOVIELENS_FIT,
    SIZES,
    Drift,
    SyntheticConfig,
    default_drifts,
    load_synthetic,
    parse_size,
    synthesize,
)
from recsys_retrain.synthetic_fit import fit_activity, relative_gaps, summary_stats

SMALL = replace(SIZES["S1"], n_events=20_000, n_users=300, n_items=500, days=120)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    config = replace(SMALL, drifts=default_drifts(SMALL.days))
    return config, synthesize(config, tmp_path_factory.mktemp("syn") / "log")


def test_at_movielens_size_the_summary_statistics_are_within_ten_percent(movielens, tmp_path):
    real = summary_stats(movielens.interactions)
    log = synthesize(MOVIELENS_FIT, tmp_path / "ml")
    synthetic = summary_stats(load_synthetic(log.folder).interactions)
    gaps = relative_gaps(synthetic, real)
    assert max(gaps.values()) <= 0.10, {name: (round(synthetic[name], 3), round(real[name], 3)) for name in gaps}
    assert abs(log.events - len(movielens.interactions)) <= 0.01 * len(movielens.interactions)


def test_the_activity_parameters_are_movielens_own(movielens):
    quantiles, tail = fit_activity(movielens.interactions["user_id"].value_counts().to_numpy())
    assert quantiles == pytest.approx(MOVIELENS_FIT.activity_quantiles, abs=1e-3)
    assert tail == pytest.approx(MOVIELENS_FIT.activity_tail, abs=0.01)


def test_the_log_is_what_the_data_stage_ingests(drifting):
    config, log = drifting
    raw = load_synthetic(log.folder)
    inter = raw.interactions
    good, bad = check_events(pd.read_parquet(log.interactions), DataSettings())
    assert bad.empty and len(good) == len(inter) == log.events
    assert inter["timestamp"].is_monotonic_increasing
    assert not inter.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert set(inter["user_id"]) <= set(raw.users["user_id"]) and set(inter["item_id"]) <= set(raw.items["item_id"])
    assert inter["rating"].between(1, 5).all() and raw.items["genres"].str.len().gt(0).all()
    start = pd.Timestamp(config.start, tz="UTC")
    assert inter["timestamp"].min() >= start and inter["timestamp"].max() < start + pd.Timedelta(days=config.days)
    assert pq.ParquetFile(log.interactions).metadata.num_row_groups > 1  # written week by week


def test_same_config_same_log(tmp_path):
    tiny = replace(SMALL, n_events=3_000, n_users=50, n_items=80, days=30)
    a, b = synthesize(tiny, tmp_path / "a"), synthesize(tiny, tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(a.interactions), pd.read_parquet(b.interactions))
    other = synthesize(replace(tiny, seed=1), tmp_path / "c")
    assert not pd.read_parquet(other.interactions).equals(pd.read_parquet(a.interactions))


def test_the_truth_names_each_drift_and_the_log_shows_it(drifting):
    config, log = drifting
    truth, inter = log.truth, load_synthetic(log.folder).interactions
    assert [d["kind"] for d in truth["drifts"]] == ["taste_shift", "popularity_shift", "new_item_influx", "activity_drop"]
    day = (inter["timestamp"] - pd.Timestamp(config.start, tz="UTC")).dt.days
    influx = next(d for d in truth["drifts"] if d["kind"] == "new_item_influx")
    new = inter["item_id"].isin(influx["items"])
    assert not (new & (day < influx["day"])).any() and new[day >= influx["day"]].mean() > 0.02
    shifted = next(d for d in truth["drifts"] if d["kind"] == "popularity_shift")
    moved = inter["item_id"].isin(shifted["items"])
    assert moved[day >= shifted["day"]].mean() > 5 * moved[day < shifted["day"]].mean()
    assert next(d for d in truth["drifts"] if d["kind"] == "taste_shift")["users"] > 0
    assert truth["events"] == log.events and truth["config"]["n_users"] == config.n_users


def test_an_activity_drop_thins_the_days_after_it(tmp_path):
    base = replace(SMALL, user_new_share=0.0, user_lifetime_days=10_000.0)  # activity spread evenly over the log
    plain = load_synthetic(synthesize(base, tmp_path / "plain").folder).interactions
    dropped = load_synthetic(synthesize(replace(base, drifts=(Drift("activity_drop", 60, 0.5),)), tmp_path / "drop").folder).interactions
    cut = pd.Timestamp(base.start, tz="UTC") + pd.Timedelta(days=60)
    before = (dropped["timestamp"] < cut).sum() / (plain["timestamp"] < cut).sum()
    after = (dropped["timestamp"] >= cut).sum() / (plain["timestamp"] >= cut).sum()
    assert before == pytest.approx(1.0, abs=0.05) and after == pytest.approx(0.5, abs=0.08)


def test_choices_follow_the_users_tastes(drifting):
    """A user's events concentrate on few latent clusters: far above what popularity alone gives."""
    _, log = drifting
    latent = np.load(log.folder / "latent.npz")
    inter = load_synthetic(log.folder).interactions
    cluster = latent["item_cluster"][inter["item_id"].to_numpy() - 1]
    per_user = pd.crosstab(inter["user_id"], cluster)
    top_share = (per_user.max(axis=1) / per_user.sum(axis=1)).mean()
    global_top = np.bincount(cluster).max() / len(cluster)
    assert top_share > 2 * global_top


@pytest.mark.parametrize("spec, events", [("synthetic:S2", 1_000_000), ("ml100k", 100_000), ("5000,40,60", 5_000)])
def test_sizes_by_name_or_numbers(spec, events):
    config = parse_size(spec)
    assert config.n_events == events and len(config.drifts) == 4


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="outside"):
        SyntheticConfig(days=10, drifts=(Drift("taste_shift", 20, 0.1),))
    with pytest.raises(ValueError, match="kind"):
        Drift("meteor", 1, 0.1)
    with pytest.raises(ValueError, match="unknown synthetic size"):
        parse_size("synthetic:huge")


def test_a_synthetic_source_is_generated_once_and_read_back(tmp_path):
    from recsys_retrain.cli import load_source
    from recsys_retrain.settings import Settings

    settings = Settings(home=tmp_path / "home")
    raw = load_source(settings, "synthetic:4000,40,60,60")
    assert len(raw.interactions) > 3000 and len(raw.users) == 40 and len(raw.items) == 60
    log = next((settings.cache_dir / "synthetic").iterdir()) / "interactions.parquet"
    written = log.stat().st_mtime_ns
    again = load_source(settings, "synthetic:4000,40,60,60")
    assert log.stat().st_mtime_ns == written  # read from the cache, not generated again
    pd.testing.assert_frame_equal(again.interactions, raw.interactions)
