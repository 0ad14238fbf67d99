"""Spec of recsys_retrain.simulate: each injector changes what it claims and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_retrain import simulate as sim

ITEM_COLS = ["item_id", "item_genres", "item_release_year"]
KEEP = ["user_id", "timestamp", "rating", "user_age", "user_gender", "user_occupation"]


@pytest.fixture(scope="module")
def base(movielens) -> pd.DataFrame:
    return sim.base_log(movielens)


@pytest.fixture(scope="module")
def items(base) -> pd.DataFrame:
    return sim.catalogue(base)


@pytest.fixture(scope="module")
def window(base) -> pd.DataFrame:
    return sim.resample_window(base, pd.Timestamp("2000-01-03", tz="UTC"), 7, seed=3, sessions=300)


def consistent_items(out: pd.DataFrame, items: pd.DataFrame) -> None:
    """Item side features of every row are the catalogue's."""
    known = out.merge(items[ITEM_COLS], on="item_id", how="inner", suffixes=("", "_cat"))
    assert (known["item_genres"] == known["item_genres_cat"]).all()
    assert (known["item_release_year"] == known["item_release_year_cat"]).all()


class TestBaseAndResampling:
    def test_base_log_joins_side_features(self, base, movielens):
        assert len(base) == len(movielens.interactions) and set(sim.BASE_COLUMNS) <= set(base.columns)
        assert base[sim.BASE_COLUMNS].notna().all().all()
        assert (base["user_age"] > 0).all() and base["item_genres"].str.len().gt(0).mean() > 0.99

    def test_resampled_window_keeps_sessions_weekday_and_time_of_day(self, base):
        start = pd.Timestamp("2000-01-03", tz="UTC")
        w = sim.resample_window(base, start, 7, seed=1, sessions=200)
        assert start <= w["timestamp"].min() and w["timestamp"].max() < start + pd.Timedelta(days=7)
        sessions = w.groupby(["user_id", w["timestamp"].dt.floor("D")]).size()
        assert 150 <= len(sessions) <= 200  # a session drawn twice on the same day merges
        keyed = base.assign(tod=base["timestamp"].dt.strftime("%a %H:%M:%S"))
        w_keys = set(zip(w["user_id"], w["item_id"], w["timestamp"].dt.strftime("%a %H:%M:%S")))
        assert w_keys <= set(zip(keyed["user_id"], keyed["item_id"], keyed["tod"]))

    def test_resampling_is_seeded(self, base):
        a, b = sim.no_drift_pair(base, 4), sim.no_drift_pair(base, 4)
        pd.testing.assert_frame_equal(a[0], b[0])
        pd.testing.assert_frame_equal(a[1], b[1])
        assert a[1]["timestamp"].min() >= a[0]["timestamp"].max().normalize()
        other = sim.no_drift_pair(base, 5)[1]
        assert not other["user_id"].equals(a[1]["user_id"])


    def test_a_longer_reference_keeps_the_session_rate(self, base):
        reference, current = sim.no_drift_pair(base, 6, reference_days=28, sessions=70)
        span = current["timestamp"].min().normalize() - reference["timestamp"].min().normalize()
        assert pd.Timedelta(days=27) <= span <= pd.Timedelta(days=28) and current["timestamp"].max() < reference["timestamp"].min() + pd.Timedelta(days=35)
        per_day = [w.groupby(["user_id", w["timestamp"].dt.floor("D")]).ngroups / days for w, days in ((reference, 28), (current, 7))]
        assert per_day[0] == pytest.approx(per_day[1], rel=0.15)  # 280 and 70 sessions drawn, a few merge


class TestInjectors:
    def test_popularity_shift_moves_share_to_a_few_tail_items(self, window, items):
        out = sim.inject(window, [sim.popularity_shift(0.1, n_items=5)], seed=0, items=items)
        changed = (out["item_id"] != window["item_id"]).to_numpy()
        assert 0.07 < changed.mean() < 0.13
        gainers = set(out.loc[changed, "item_id"])
        assert len(gainers) <= 5 and gainers <= set(items["item_id"].iloc[len(items) // 2 :])
        pd.testing.assert_frame_equal(out[KEEP], window[KEEP])
        consistent_items(out, items)

    def test_new_item_influx_brings_unseen_items(self, window, items):
        out = sim.inject(window, [sim.new_item_influx(0.1)], seed=0, items=items)
        new = ~out["item_id"].isin(items["item_id"])
        assert 0.07 < new.mean() < 0.13
        assert (out.loc[new, "item_release_year"] == items["item_release_year"].max()).all()
        pd.testing.assert_frame_equal(out.loc[~new, ITEM_COLS], window.loc[~new, ITEM_COLS])
        pd.testing.assert_frame_equal(out[KEEP], window[KEEP])

    def test_taste_change_swaps_two_genres_for_chosen_users_only(self, window, items):
        out = sim.inject(window, [sim.taste_change(0.5, genres=("Drama", "Horror"))], seed=0, items=items)
        changed = (out["item_id"] != window["item_id"]).to_numpy()
        assert changed.any()
        before, after = window.loc[changed, "item_genres"], out.loc[changed, "item_genres"]
        was_drama = before.str.contains("Drama")
        assert after[was_drama].str.contains("Horror").all() and not after[was_drama].str.contains("Drama").any()
        assert after[~was_drama].str.contains("Drama").all()
        touched = set(window.loc[changed, "user_id"])
        untouched = ~window["user_id"].isin(touched)
        pd.testing.assert_frame_equal(out[untouched], window[untouched])
        assert 0.2 < len(touched) / window["user_id"].nunique() < 0.6
        pd.testing.assert_frame_equal(out[KEEP], window[KEEP])
        consistent_items(out, items)

    def test_rating_inflation_only_raises_ratings(self, window, items):
        out = sim.inject(window, [sim.rating_inflation(0.5)], seed=0, items=items)
        room = window["rating"] <= 4
        assert out.loc[room, "rating"].mean() - window.loc[room, "rating"].mean() == pytest.approx(0.5, abs=0.05)
        assert (out["rating"] >= window["rating"]).all() and out["rating"].between(1, 5).all()
        pd.testing.assert_frame_equal(out.drop(columns="rating"), window.drop(columns="rating"))

    def test_sparsity_change_removes_a_share_of_rows_and_keeps_the_rest(self, window, items):
        out = sim.inject(window, [sim.sparsity_change(0.5)], seed=0, items=items)
        assert 0.45 < 1 - len(out) / len(window) < 0.55
        merged = out.merge(window, how="left", indicator=True)
        assert (merged["_merge"] == "both").all()

    def test_regime_change_switches_items_after_a_change_point(self, window, items):
        out = sim.inject(window, [sim.regime_change(0.25)], seed=0, items=items)
        cut = window["timestamp"].quantile(0.75)
        before = window["timestamp"] < cut
        pd.testing.assert_frame_equal(out[before], window[before])
        assert (out.loc[~before, "item_id"] != window.loc[~before, "item_id"]).mean() > 0.95
        pd.testing.assert_frame_equal(out[KEEP], window[KEEP])
        consistent_items(out, items)

    def test_injectors_compose_are_seeded_and_never_mutate_their_input(self, window, items):
        copy = window.copy()
        chain = [sim.rating_inflation(1.0), sim.sparsity_change(0.5), sim.new_item_influx(0.2)]
        a = sim.inject(window, chain, seed=7, items=items)
        pd.testing.assert_frame_equal(a, sim.inject(window, chain, seed=7, items=items))
        pd.testing.assert_frame_equal(window, copy)
        assert len(a) < 0.6 * len(window) and a["rating"].mean() > window["rating"].mean() + 0.5
        assert (~a["item_id"].isin(items["item_id"])).mean() > 0.15

    @pytest.mark.parametrize("factory", [sim.popularity_shift, sim.new_item_influx, sim.taste_change, sim.sparsity_change, sim.regime_change])
    def test_zero_magnitude_changes_nothing_and_bad_shares_are_refused(self, window, items, factory):
        pd.testing.assert_frame_equal(sim.inject(window, [factory(0.0)], seed=0, items=items), window)
        with pytest.raises(ValueError, match="share"):
            factory(1.5)

    def test_every_drift_type_has_three_increasing_magnitudes(self):
        for factory, magnitudes in sim.DRIFT_TYPES.values():
            assert callable(factory) and len(magnitudes) == 3 and list(magnitudes) == sorted(magnitudes)


def test_the_drifting_timeline_holds_its_scheduled_drifts(movielens):
    from recsys_retrain.simulate import drifting_timeline

    timeline, truth = drifting_timeline(movielens, start="2000-01-03", weeks=6, regime_week=2, influx_week=4, seed=3)
    inter = timeline.interactions
    week = ((inter["timestamp"] - pd.Timestamp("2000-01-03", tz="UTC")) // pd.Timedelta(days=7)).to_numpy()
    assert set(week) == set(range(6)) and inter["timestamp"].is_monotonic_increasing
    assert not inter.duplicated(["user_id", "item_id", "timestamp"]).any()  # the data stage would quarantine repeats
    old_items = set(movielens.items["item_id"])
    new = ~inter["item_id"].isin(old_items)
    assert not new[week < 4].any()  # new items only from the influx week, about the share asked for
    assert 0.07 < new[week >= 4].mean() < 0.13
    assert set(inter.loc[new, "item_id"]) <= set(timeline.items["item_id"]) - old_items
    # before the regime change every week follows the same item popularity; after it, another one
    top = [set(inter.loc[week == w, "item_id"].value_counts().index[:20]) for w in range(4)]
    assert len(top[0] & top[1]) >= 8 and len(top[1] & top[2]) <= 3 and len(top[2] & top[3]) >= 8
    assert truth["regime_change"]["week"] == 2 and truth["new_item_influx"]["start"].startswith("2000-01-31")
    again, _ = drifting_timeline(movielens, start="2000-01-03", weeks=6, regime_week=2, influx_week=4, seed=3)
    pd.testing.assert_frame_equal(again.interactions, inter)  # seeded
