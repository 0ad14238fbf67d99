"""recsys_retrain.data: loading, the Feast repository, point-in-time windows, validation.

Real Feast throughout (local provider, parquet offline store, SQLite online store),
always in a copy of features/ under tmp_path.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.features import WINDOW_COLUMNS
from recsys_retrain.data.ingest import ingest, quarantined, bootstrap_feature_repo
from recsys_retrain.data.load import RawData, load_interactions, load_movielens, load_raw
from recsys_retrain.data.store import feast_point_in_time, read_events, item_catalogue, pull_window, user_features
from recsys_retrain.data.validation import validate
from recsys_retrain.data.features import V1_ITEM, V1_USER
from recsys_retrain.errors import DataError, ValidationError
from recsys_retrain.settings import DataSettings

DAY = pd.Timestamp("2024-03-01", tz="UTC")


def events(*rows: tuple[int, int, str]) -> pd.DataFrame:
    """(user, item, time) rows -> normalised interactions, rating 4."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ts = pd.to_datetime(df["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return df.assign(timestamp=ts, rating=4.0).astype({"user_id": "int64", "item_id": "int64"})


def raw(inter: pd.DataFrame) -> RawData:
    users = pd.DataFrame({"user_id": [1], "age": [30], "gender": ["F"], "occupation": ["writer"]})
    items = pd.DataFrame({"item_id": [10], "genres": ["Drama"], "release_year": [1999]})
    return RawData(inter, users, items)


@pytest.fixture(scope="module")
def ml_repo(movielens: RawData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All of MovieLens-100K bootstrapped into a throwaway copy of features/."""
    repo = copy_feature_repo(tmp_path_factory.mktemp("ml") / "features")
    bootstrap_feature_repo(movielens, repo)
    return repo


def assert_features_from_the_past(row, inter: pd.DataFrame) -> None:
    """Every rolling feature of a window row, recomputed by brute force from earlier days only."""
    day = row.timestamp.floor("D")
    before = inter[inter.timestamp < day]
    mine, its = before[before.user_id == row.user_id], before[before.item_id == row.item_id]
    def recent(df: pd.DataFrame, days: int) -> int:
        return int((df.timestamp >= day - pd.Timedelta(days=days)).sum())
    assert row.user_n_interactions == len(mine) and row.item_n_interactions == len(its)
    assert (row.user_interactions_7d, row.user_interactions_30d) == (recent(mine, 7), recent(mine, 30))
    assert (row.item_interactions_7d, row.item_interactions_30d) == (recent(its, 7), recent(its, 30))
    assert row.user_distinct_items == mine.item_id.nunique()
    assert row.user_mean_rating == pytest.approx(mine.rating.mean() if len(mine) else 0.0)
    assert row.item_mean_rating == pytest.approx(its.rating.mean() if len(its) else 0.0)
    last = (day - mine.timestamp.max().floor("D")).days if len(mine) else -1
    first = (day - its.timestamp.min().floor("D")).days if len(its) else -1
    assert (row.user_days_since_last, row.item_days_since_first) == (last, first)
    recent30 = before[before.timestamp >= day - pd.Timedelta(days=30)].item_id.value_counts()
    assert row.item_popularity_rank == 1 + int((recent30 > recent(its, 30)).sum())


class TestLoading:
    def test_movielens_from_the_recbole_wheel(self, movielens: RawData) -> None:
        inter, users, items = movielens.interactions, movielens.users, movielens.items
        assert (len(inter), inter.user_id.nunique(), inter.item_id.nunique()) == (100_000, 943, 1682)
        assert inter.dtypes.astype(str).to_dict() == {
            "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
        }
        assert inter.rating.between(1, 5).all() and not inter.isna().any().any()
        assert list(users.columns) == ["user_id", "age", "gender", "occupation"] and len(users) == 943
        toy_story = items.set_index("item_id").loc[1]
        assert (toy_story.genres, toy_story.release_year) == ("Animation|Children's|Comedy", 1995)

    @pytest.mark.parametrize("pip_fails", [False, True])
    def test_the_wheel_appears_whole_or_not_at_all(self, tmp_path: Path, monkeypatch, pip_fails: bool) -> None:
        """pip writes into a private folder; only a finished download is renamed into the cache."""
        import subprocess

        from recsys_retrain.data import load

        def fake_pip(cmd, **kwargs):
            target = Path(cmd[cmd.index("-d") + 1])
            assert target.parent == tmp_path and target.name.startswith(".download-")  # never the cache itself
            (target / load._WHEEL_FILE).write_bytes(b"half a wheel" if pip_fails else b"a whole wheel")
            return subprocess.CompletedProcess(cmd, 1 if pip_fails else 0, "", "connection reset" if pip_fails else "")

        monkeypatch.setattr(load.subprocess, "run", fake_pip)
        if pip_fails:
            with pytest.raises(DataError, match="pip download failed \\(connection reset\\)"):
                load._fetch_wheel(tmp_path)
            assert list(tmp_path.iterdir()) == []
        else:
            assert load._fetch_wheel(tmp_path).read_bytes() == b"a whole wheel"
            assert [p.name for p in tmp_path.iterdir()] == [load._WHEEL_FILE]

    def test_grouplens_folder(self, tmp_path: Path) -> None:
        (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t11\t3\t881250950\n")
        genres = "|".join(["0"] * 19)
        comedy = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
        (tmp_path / "u.item").write_bytes(
            f"10|Amélie (2001)|01-Jan-2001||http://x|{comedy}\n11|unknown|||http://y|1|{genres[2:]}\n".encode("latin-1")
        )
        (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
        data = load_movielens(tmp_path / "cache", tmp_path)
        assert data.interactions.timestamp[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
        assert data.items.to_dict("list") == {"item_id": [10, 11], "genres": ["Comedy", ""], "release_year": [2001, 0]}
        assert data.users.gender.tolist() == ["M", "F"]

    def test_csv_log_with_unix_seconds_and_no_rating(self, tmp_path: Path) -> None:
        path = tmp_path / "log.csv"
        pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [0, 86400]}).to_csv(path, index=False)
        df = load_interactions(path)
        assert df.rating.tolist() == [1.0, 1.0]
        assert df.timestamp.tolist() == [pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("1970-01-02", tz="UTC")]

    def test_parquet_log_with_datetime_strings(self, tmp_path: Path) -> None:
        path = tmp_path / "log.parquet"
        pd.DataFrame(
            {"user_id": [1], "item_id": [3], "timestamp": ["2024-03-01T12:00:00+01:00"], "rating": [4.5]}
        ).to_parquet(path)
        df = load_interactions(path)
        assert df.timestamp[0] == pd.Timestamp("2024-03-01 11:00", tz="UTC") and df.rating[0] == 4.5
        assert str(df.timestamp.dtype) == "datetime64[ns, UTC]"


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("interactions.csv", None, "interactions.csv: file not found"),
        ("interactions.json", "{}", "interactions.json: unknown extension '.json'"),
        ("interactions.csv", "user_id,timestamp\n1,0\n", "interactions.csv: missing required column(s) item_id"),
        ("interactions.parquet", b"not parquet", "interactions.parquet: unreadable"),
        ("interactions.csv", "user_id,item_id,timestamp\n1,2,yesterday-ish\n", "interactions.csv: column timestamp"),
        ("interactions.csv", "user_id,item_id,timestamp\nbob,2,0\n", "interactions.csv: column user_id has 1 non-numeric"),
    ],
)
def test_bad_log_says_which_file_and_what(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(DataError) as err:
        load_interactions(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bad_grouplens_folder_names_the_missing_file(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n")
    with pytest.raises(DataError, match=r"^u\.item: file not found"):
        load_movielens(tmp_path, tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_movielens(tmp_path, tmp_path / "u.data")


class TestFeatureRepo:
    def test_bootstrap_is_idempotent_and_leaves_no_temp_files(self, feature_repo: Path) -> None:
        data = raw(events((1, 10, "2024-03-01 10:00"), (2, 10, "2024-03-02 10:00")))
        bootstrap_feature_repo(data, feature_repo)
        first = {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        bootstrap_feature_repo(data, feature_repo)
        again = {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        assert first == again and len(first) == 4 + 2  # four feature sources, two day partitions
        assert not [p for p in (feature_repo / "data").rglob("*") if ".tmp-" in p.name or ".staging" in p.name]

    def test_a_bare_log_gets_default_profiles(self, feature_repo: Path, tmp_path: Path) -> None:
        log = tmp_path / "log.csv"
        pd.DataFrame({"user_id": [1, 2], "item_id": [3, 3], "timestamp": ["2024-03-01", "2024-03-02"]}).to_csv(log)
        bootstrap_feature_repo(load_raw(tmp_path / "cache", log), feature_repo)
        window = pull_window(feature_repo, "2024-03-01", "2024-03-03")
        assert window[["user_gender", "user_age", "item_genres", "item_release_year"]].drop_duplicates().values.tolist() == [
            ["unknown", 0, "", 0]
        ]
        assert window.item_n_interactions.tolist() == [0, 1] and window.rating.tolist() == [1.0, 1.0]

    def test_failed_bootstrap_keeps_the_previous_sources(self, feature_repo: Path) -> None:
        good = raw(events((1, 10, "2024-03-01 10:00")))
        bootstrap_feature_repo(good, feature_repo)
        before = {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        unwritable = pd.DataFrame({"item_id": [10], "genres": [object()], "release_year": [1999]})
        with pytest.raises(DataError, match=r"^item_profile\.parquet: could not write"):
            bootstrap_feature_repo(RawData(events((1, 10, "2024-03-05 10:00")), good.users, unwritable), feature_repo)
        after = {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        assert before == after and not [p for p in (feature_repo / "data").rglob("*") if ".tmp-" in p.name]

    def test_every_view_sets_timestamp_ttl_and_tags(self, ml_repo: Path) -> None:
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(ml_repo))
        views = {fv.name: fv for fv in store.list_feature_views()}
        assert set(views) == {"user_profile", "user_stats", "item_profile", "item_stats"}
        for fv in views.values():
            assert fv.batch_source.timestamp_field == "event_timestamp" and fv.ttl is not None and fv.tags
        services = {s.name: s for s in store.list_feature_services()}
        assert sorted(services) == ["two_tower_v1", "two_tower_v2"]
        v1 = [f.name for p in services["two_tower_v1"].feature_view_projections for f in p.features]
        assert sorted(v1) == sorted(V1_USER + V1_ITEM)

    def test_online_serving_after_materialize(self, ml_repo: Path) -> None:
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(ml_repo))
        store.materialize(datetime(1997, 9, 1, tzinfo=timezone.utc), datetime(1998, 5, 1, tzinfo=timezone.utc))
        online = store.get_online_features(
            features=store.get_feature_service("two_tower_v1"), entity_rows=[{"user_id": 1, "item_id": 1}]
        ).to_dict()
        assert online["user_age"] == [24] and online["item_genres"] == ["Animation|Children's|Comedy"]
        assert online["user_n_interactions"] == [272] and online["item_n_interactions"] == [452]


class TestPointInTime:
    def test_counts_never_include_the_same_day_or_later(self, feature_repo: Path) -> None:
        early = events(
            (1, 10, "2024-03-01 09:00"), (1, 11, "2024-03-01 09:00"), (1, 10, "2024-03-01 18:00"),
            (2, 10, "2024-03-02 00:00"), (1, 12, "2024-03-03 08:00"),
        )
        later = events((1, 10, "2024-03-03 07:00"), (1, 11, "2024-03-09 12:00"))
        bootstrap_feature_repo(raw(pd.concat([early, later], ignore_index=True)), feature_repo)
        window = pull_window(feature_repo, "2024-03-01", "2024-03-04").set_index(["user_id", "item_id", "timestamp"])
        # Same-second events of one user with two items both survive the join.
        assert len(window) == 6
        n = window[["user_n_interactions", "item_n_interactions"]]
        assert n.loc[(1, 10, DAY + pd.Timedelta(hours=18))].tolist() == [0, 0]  # own day is invisible
        assert n.loc[(2, 10, DAY + pd.Timedelta(days=1))].tolist() == [0, 2]  # day 1 visible at 00:00 next day
        # Day 3: the 07:00 event of the same morning must not count for the 08:00 one.
        assert n.loc[(1, 12, DAY + pd.Timedelta(days=2, hours=8))].tolist() == [3, 0]
        assert window.loc[(1, 10, DAY + pd.Timedelta(hours=9)), "user_age"] == 30

    def test_later_events_do_not_change_earlier_features(self, tmp_path: Path) -> None:
        early = events((1, 10, "2024-03-01 09:00"), (2, 10, "2024-03-02 09:00"), (1, 10, "2024-03-03 09:00"))
        later = events(*[(u, 10, "2024-03-03 10:00") for u in range(3, 9)])
        without = copy_feature_repo(tmp_path / "without")
        with_later = copy_feature_repo(tmp_path / "with")
        bootstrap_feature_repo(raw(early), without)
        bootstrap_feature_repo(raw(pd.concat([early, later], ignore_index=True)), with_later)
        a = pull_window(without, "2024-03-01", "2024-03-03 09:30")
        b = pull_window(with_later, "2024-03-01", "2024-03-03 09:30")
        pd.testing.assert_frame_equal(a, b)
        assert b.item_n_interactions.tolist() == [0, 1, 2]


class TestRetrieval:
    def test_one_week_of_movielens(self, ml_repo: Path, movielens: RawData) -> None:
        t0, t1 = pd.Timestamp("1998-01-01", tz="UTC"), pd.Timestamp("1998-01-08", tz="UTC")
        window = pull_window(ml_repo, t0.to_pydatetime(), "1998-01-08T00:00:00")
        inter = movielens.interactions
        assert len(window) == inter.timestamp.between(t0, t1, inclusive="left").sum() > 1000
        assert list(window.columns) == WINDOW_COLUMNS and not window.isna().any().any()
        assert window.timestamp.is_monotonic_increasing
        assert dict(list(window.dtypes.astype(str).to_dict().items())[:11]) == {
            "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
            "user_age": "int64", "user_gender": "object", "user_occupation": "object", "user_n_interactions": "int64",
            "item_genres": "object", "item_release_year": "int64", "item_n_interactions": "int64",
        }
        for row in window.sample(25, random_state=0).itertuples():
            assert_features_from_the_past(row, inter)

    def test_empty_window_has_the_columns(self, ml_repo: Path) -> None:
        window = pull_window(ml_repo, "2030-01-01", "2030-01-08")
        assert window.empty and list(window.columns) == WINDOW_COLUMNS
        assert str(window.timestamp.dtype) == "datetime64[ns, UTC]"

    def test_item_catalogue_and_user_features_as_of(self, ml_repo: Path, movielens: RawData) -> None:
        as_of = "1998-01-08"
        cat = item_catalogue(ml_repo, as_of)
        assert list(cat.columns)[:4] == ["item_id", "item_genres", "item_release_year", "item_n_interactions"]
        assert cat.item_id.tolist() == list(range(1, 1683))
        before = movielens.interactions[movielens.interactions.timestamp < pd.Timestamp(as_of, tz="UTC")]
        assert cat.item_n_interactions.tolist() == before.item_id.value_counts().reindex(cat.item_id, fill_value=0).tolist()
        users = user_features(ml_repo, [99999, 1], datetime(1998, 1, 8))
        assert users.to_dict("records")[1] == {
            "user_id": 99999, "user_age": 0, "user_gender": "unknown", "user_occupation": "unknown",
            "user_n_interactions": 0, "user_interactions_7d": 0, "user_interactions_30d": 0, "user_distinct_items": 0,
            "user_mean_rating": 0.0, "user_days_since_last": -1,
        }
        assert users.user_n_interactions[0] == (before.user_id == 1).sum() > 0

    def test_unbootstrapped_repo_is_a_clear_error(self, feature_repo: Path) -> None:
        with pytest.raises(DataError, match="not bootstrapped"):
            pull_window(feature_repo, "2024-01-01", "2024-01-02")


class TestValidate:
    @staticmethod
    def window(n: int = 100) -> pd.DataFrame:
        ts = pd.date_range("2024-03-01", periods=n, freq="h", tz="UTC")
        return pd.DataFrame({"user_id": np.arange(n), "item_id": 7, "timestamp": ts, "rating": 3.0, "extra": "x"})

    def test_clean_window_passes_and_writes_nothing(self, tmp_path: Path) -> None:
        df = self.window()
        out = validate(df, DataSettings(), tmp_path / "q.parquet")
        pd.testing.assert_frame_equal(out, df)
        assert not (tmp_path / "q.parquet").exists()

    def test_bad_rows_go_to_quarantine_with_reasons(self, tmp_path: Path) -> None:
        df = self.window()
        df.loc[1, "user_id"] = -5
        df.loc[2, "rating"] = 9.0
        df.loc[3, "timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)
        df.loc[5] = df.loc[4]  # duplicate event: the first stays, the copy is quarantined
        out = validate(df, DataSettings(max_bad_share=0.05), tmp_path / "q.parquet")
        assert len(out) == 96 and -5 not in out.user_id.tolist()
        quarantined = pd.read_parquet(tmp_path / "q.parquet")
        assert list(quarantined.columns) == [*df.columns, "reason"]
        assert quarantined.reason.tolist() == [
            "negative user_id", "rating outside [0.0, 5.0]", "timestamp in the future", "duplicate event",
        ]

    def test_too_many_bad_rows_fail_the_window(self, tmp_path: Path) -> None:
        df = self.window()
        df.loc[:4, "rating"] = np.nan
        with pytest.raises(ValidationError) as err:
            validate(df, DataSettings(max_bad_share=0.01), tmp_path / "q.parquet")
        message = str(err.value)
        assert "5 of 100 rows bad" in message and "row 0: null rating" in message and "\n" not in message
        assert len(pd.read_parquet(tmp_path / "q.parquet")) == 5


class TestRollingFeatures:
    def test_a_later_event_never_leaks_into_any_feature(self, tmp_path: Path) -> None:
        """Same log with and without later events (same day and after): earlier rows identical."""
        early = events(
            (1, 10, "2024-03-01 09:00"), (2, 10, "2024-03-01 10:00"), (1, 11, "2024-03-05 09:00"),
            (2, 12, "2024-03-20 09:00"), (1, 10, "2024-04-10 09:00"),
        )
        leaky = events((3, 10, "2024-04-10 09:30"), (1, 12, "2024-04-10 10:00"), (3, 11, "2024-04-11 00:00"))
        without, with_later = copy_feature_repo(tmp_path / "a"), copy_feature_repo(tmp_path / "b")
        bootstrap_feature_repo(raw(early), without)
        bootstrap_feature_repo(raw(pd.concat([early, leaky], ignore_index=True)), with_later)
        a = pull_window(without, "2024-03-01", "2024-04-10 09:01")
        b = pull_window(with_later, "2024-03-01", "2024-04-10 09:01")
        pd.testing.assert_frame_equal(a, b)
        last = b.iloc[-1]  # user 1, item 10 on 2024-04-10: sees 2024-03-01..04-09 only
        assert (last.user_n_interactions, last.user_interactions_30d, last.user_days_since_last) == (2, 0, 36)
        assert (last.item_n_interactions, last.item_interactions_30d, last.item_days_since_first) == (2, 0, 40)
        assert last.user_distinct_items == 2 and last.item_mean_rating == 4.0
        full = pull_window(with_later, "2024-03-01", "2024-05-01")
        for row in full.itertuples():
            assert_features_from_the_past(row, pd.concat([early, leaky], ignore_index=True))

    def test_fast_join_equals_feast_historical_retrieval(self, feature_repo: Path) -> None:
        rng = np.random.default_rng(0)
        n = 300
        ts = DAY + pd.to_timedelta(rng.integers(0, 40 * 86400, n), unit="s")
        log = pd.DataFrame({"user_id": rng.integers(1, 15, n), "item_id": rng.integers(10, 30, n), "timestamp": ts})
        log = log.assign(rating=rng.integers(1, 6, n).astype(float), timestamp=log.timestamp.astype("datetime64[ns, UTC]"))
        bootstrap_feature_repo(raw(log.drop_duplicates(["user_id", "item_id", "timestamp"])), feature_repo)
        fast = pull_window(feature_repo, "2024-03-10", "2024-04-15")
        from recsys_retrain.data.store import _store

        store = _store(feature_repo)
        slow = fast[["user_id", "item_id", "timestamp", "rating"]].rename(columns={"timestamp": "event_timestamp"})
        for key in ("user_id", "item_id"):
            slow = slow.merge(feast_point_in_time(store, slow[[key, "event_timestamp"]], key), on=[key, "event_timestamp"])
        slow = slow.rename(columns={"event_timestamp": "timestamp"})[fast.columns]
        slow = slow.astype(fast.dtypes.to_dict())
        pd.testing.assert_frame_equal(fast, slow.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True))

    def test_service_v1_returns_the_v1_columns(self, ml_repo: Path) -> None:
        window = pull_window(ml_repo, "1998-01-01", "1998-01-02", service="two_tower_v1")
        assert list(window.columns) == WINDOW_COLUMNS[:11]


def weeks_of(inter: pd.DataFrame):
    monday = inter.timestamp.dt.floor("D") - pd.to_timedelta(inter.timestamp.dt.weekday, unit="D")
    return inter.groupby(monday)


class TestIngest:
    def test_movielens_week_by_week_equals_the_source_and_a_bootstrap(
        self, tmp_path: Path, movielens: RawData, ml_repo: Path
    ) -> None:
        repo = copy_feature_repo(tmp_path / "weekly")
        inter = movielens.interactions
        for _, batch in weeks_of(inter):
            ingest(batch, repo, materialize=False)
        for name in ("user_stats", "item_stats"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(repo / "data" / f"{name}.parquet"), pd.read_parquet(ml_repo / "data" / f"{name}.parquet")
            )
        columns = ["user_id", "item_id", "timestamp", "rating"]
        for monday, batch in list(weeks_of(inter))[::4]:
            week = pull_window(repo, monday, monday + pd.Timedelta(days=7))
            expected = batch.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
            pd.testing.assert_frame_equal(week[columns], expected[columns])
            assert not week.isna().any().any()

    def test_reingesting_a_batch_changes_nothing(self, feature_repo: Path) -> None:
        batch = events((1, 10, "2024-03-01 10:00"), (2, 10, "2024-03-02 10:00"), (2, 11, "2024-03-02 11:00"))
        first = ingest(batch, feature_repo)
        files = {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        again = ingest(batch.sample(frac=1, random_state=1), feature_repo)
        assert (first.added, again.added, again.already_stored) == (3, 0, 3)
        assert files == {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*.parquet")}
        overlap = ingest(pd.concat([batch, events((3, 12, "2024-03-03 09:00"))]), feature_repo)
        assert (overlap.added, overlap.already_stored) == (1, 3) and len(read_events(feature_repo)) == 4

    def test_online_store_follows_each_batch(self, feature_repo: Path) -> None:
        from feast import FeatureStore

        ingest(events((1, 10, "2024-03-01 10:00"), (2, 10, "2024-03-02 10:00")), feature_repo)
        r = ingest(events((1, 11, "2024-03-04 10:00"), (3, 10, "2024-03-05 08:00")), feature_repo)
        assert r.materialized_to.startswith("2024-03-06T00:00:01")
        store = FeatureStore(repo_path=str(feature_repo))
        online = store.get_online_features(
            features=store.get_feature_service("two_tower_v2"), entity_rows=[{"user_id": 3, "item_id": 10}]
        ).to_dict()
        assert online["item_n_interactions"] == [3] and online["user_n_interactions"] == [1]
        assert online["user_gender"] == ["unknown"] and online["item_days_since_first"] == [5]

    def test_a_corrupted_batch_is_quarantined_whole_and_never_ingested(self, feature_repo: Path) -> None:
        good = events((1, 10, "2024-03-01 10:00"))
        ingest(good, feature_repo, materialize=False)
        future = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3)).isoformat()
        corrupted = pd.DataFrame(
            {
                "user_id": [1, "bob", -4, 2, 2, 5],
                "item_id": [11, 10, 10, 12, 12, 13],
                "timestamp": ["2024-03-02 10:00", "2024-03-02", 1709373600, "2024-03-03", "2024-03-03", future],
                "rating": [4, 3, 2, 5, 5, 1],
            }
        )
        with pytest.raises(ValidationError) as err:
            ingest(corrupted, feature_repo, DataSettings(max_bad_share=0.01))
        message = str(err.value)
        assert "4 of 6 rows bad" in message and "row 1: user_id not an integer" in message and "\n" not in message
        assert "nothing ingested" in message
        assert len(read_events(feature_repo)) == 1  # nothing of the batch reached the log
        kept = quarantined(feature_repo)
        assert len(kept) == 6  # nothing lost: the good rows are kept too
        assert kept.reason.tolist() == [
            "batch rejected: too many bad rows", "user_id not an integer", "negative user_id",
            "batch rejected: too many bad rows", "duplicate event", "timestamp in the future",
        ]

    def test_a_few_bad_rows_are_quarantined_and_the_rest_ingested(self, feature_repo: Path, tmp_path: Path) -> None:
        log = tmp_path / "batch.csv"
        rows = [f"{u},{10 + u % 3},{1709280000 + 3600 * u},4" for u in range(1, 120)] + ["7,x,1709280000,4"]
        log.write_text("user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n")
        r = ingest(log, feature_repo, DataSettings(max_bad_share=0.01), materialize=False)
        assert (r.rows, r.added, r.quarantined) == (120, 119, 1)
        assert quarantined(feature_repo)[["item_id", "reason"]].values.tolist() == [["x", "item_id not an integer"]]

    def test_a_repo_of_the_single_file_layout_is_a_clear_error_until_rebuilt(self, feature_repo: Path) -> None:
        (feature_repo / "data").mkdir()
        events((1, 10, "2024-03-01 10:00")).to_parquet(feature_repo / "data" / "interactions.parquet")
        with pytest.raises(DataError, match="older version"):
            ingest(events((1, 11, "2024-03-02 10:00")), feature_repo)
        bootstrap_feature_repo(raw(events((1, 10, "2024-03-01 10:00"))), feature_repo)
        assert ingest(events((1, 11, "2024-03-02 10:00")), feature_repo, materialize=False).added == 1

    def test_split_batches_keeps_every_row(self) -> None:
        from recsys_retrain.data.ingest import split_batches

        log = pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": 1, "timestamp": [0, 86400 * 8, "garbage", 86400 * 15]})
        parts = split_batches(log, 7)
        assert [p.user_id.tolist() for p in parts] == [[1, 3], [2], [4]]
