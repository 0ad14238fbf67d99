"""recsys_retrain.data.ingest: the Feast repository written from scratch and appended to, batch by batch.

Real Feast throughout (local provider, parquet offline store, SQLite online store),
always in a copy of features/ under tmp_path.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.ingest import ingest, quarantined, bootstrap_feature_repo
from recsys_retrain.data.load import RawData, load_raw
from recsys_retrain.data.parts import read_parts
from recsys_retrain.data.store import read_events, pull_window
from recsys_retrain.data.features import V1_ITEM, V1_USER
from recsys_retrain.errors import DataError, ValidationError
from recsys_retrain.settings import DataSettings

from tests.data.conftest import events, raw


class TestFeatureRepo:
    def test_bootstrap_is_idempotent_and_leaves_no_temp_files(self, feature_repo: Path) -> None:
        data = raw(events((1, 10, "2024-03-01 10:00"), (2, 10, "2024-03-02 10:00")))
        bootstrap_feature_repo(data, feature_repo)
        files = lambda: {str(p): p.read_bytes() for p in (feature_repo / "data").rglob("*") if p.suffix in (".parquet", ".bin")}  # noqa: E731
        first = files()
        bootstrap_feature_repo(data, feature_repo)
        again = files()
        # two profiles; stats parts stamped 03-01..03-03 (users, items); history parts 03-02, 03-03; the rolling
        # state (5 + 5 entity arrays, 3 + 3 list arrays, one day's counts per kind: 2 + 2); no publication yet;
        # two day partitions of the log
        assert first == again and len(first) == 2 + 3 + 3 + 2 + 20 + 1 + 2
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
        assert set(views) == {"user_profile", "user_stats", "item_profile", "item_stats", "user_history", "recommendations"}
        for fv in views.values():
            assert fv.batch_source.timestamp_field == "event_timestamp" and fv.ttl is not None and fv.tags
        services = {s.name: s for s in store.list_feature_services()}
        assert sorted(services) == ["recommendations_v1", "two_tower_online_v1", "two_tower_v1", "two_tower_v2"]
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
        for name in ("user_stats", "item_stats", "user_history"):
            assert sorted(p.name for p in (repo / "data" / name).iterdir()) == sorted(
                p.name for p in (ml_repo / "data" / name).iterdir())
            pd.testing.assert_frame_equal(read_parts(repo / "data", name), read_parts(ml_repo / "data", name))
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
