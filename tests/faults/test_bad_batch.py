"""Fault: a corrupted or partial ingest batch is quarantined and never reaches training."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_retrain import cycle

from recsys_retrain.data.ingest import quarantined

from recsys_retrain.data.store import read_events
from recsys_retrain.errors import DataError, ValidationError
from tests.faults.conftest import SLICE_END, report, tiny_settings, write_slice

NEXT_WEEK = ("1997-10-13", "1997-10-20")  # after the stored slice


@pytest.fixture
def world(movielens, tmp_path):
    write_slice(movielens, tmp_path / "features")
    settings = tiny_settings(tmp_path / "home", tmp_path / "features")
    later = movielens.interactions[movielens.interactions["timestamp"] >= pd.Timestamp(SLICE_END, tz="UTC")]
    batch = later.sort_values("timestamp", kind="stable").head(200)[["user_id", "item_id", "timestamp", "rating"]].reset_index(drop=True)
    return settings, batch.assign(timestamp=batch["timestamp"].astype("int64") // 10**9)  # unix seconds, as a producer writes


def stored(settings) -> int:
    return len(read_events(settings.feature_repo))


def test_corrupted_and_partial_batches_are_quarantined_and_never_trained_on(world, tmp_path, record_property):
    settings, batch = world
    before = stored(settings)

    corrupted = tmp_path / "corrupted.parquet"  # a file cut off in transfer
    batch.to_parquet(corrupted)
    corrupted.write_bytes(corrupted.read_bytes()[: corrupted.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupted.parquet: unreadable") as err:
        cycle.ingest(str(corrupted), settings)
    assert "\n" not in str(err.value) and stored(settings) == before

    garbled = batch.astype(object)  # a producer bug: ids and times as junk in 10% of the rows
    garbled.loc[::10, "user_id"] = "user?"
    garbled.loc[5::10, "timestamp"] = "not a time"
    garbled_csv = tmp_path / "garbled.csv"
    garbled.to_csv(garbled_csv, index=False)
    with pytest.raises(ValidationError, match="nothing ingested, the whole batch is quarantined") as err:
        cycle.ingest(str(garbled_csv), settings)
    assert "\n" not in str(err.value) and stored(settings) == before
    quarantine = quarantined(settings.feature_repo)
    assert len(quarantine) == len(batch)  # every row kept, each with its reason

    partial = tmp_path / "partial.csv"  # the last line cut off mid-row
    text = batch.to_csv(index=False)
    partial.write_text(text[: text.rstrip("\n").rfind(",")])
    result = cycle.ingest(str(partial), settings)
    assert result["quarantined"] == 1 and result["added"] == len(batch) - 1

    window = read_events(settings.feature_repo, *NEXT_WEEK)
    good = batch.iloc[:-1]  # what the training step may pull: the partial batch's complete rows, nothing garbled
    assert sorted(zip(window["user_id"], window["item_id"])) == sorted(zip(good["user_id"], good["item_id"]))
    lost = len(batch) - len(window) - result["quarantined"]  # every row is stored or quarantined, none vanished
    report(record_property, data_lost_rows=lost, bad_promotions=0)
