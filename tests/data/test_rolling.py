"""recsys_retrain.data.rolling and .parts: the rows computed forward from a state equal the full recomputation.

The oracle (``tests.data.oracle``) is the dense users x days grid the package built over the whole
log before; after any sequence of batches the stored parts must hold exactly its rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import copy_feature_repo

from recsys_retrain.data.features import HISTORY_CAP, TS
from recsys_retrain.data.ingest import ingest
from recsys_retrain.data.load import RawData
from recsys_retrain.data.parts import load_state, read_parts, save_state
from recsys_retrain.data.rolling import ItemLists, RollingState, advance
from recsys_retrain.data.store import pull_window

from tests.data.oracle import history_table, stats_tables

KEYS = {"user_stats": "user_id", "item_stats": "item_id", "user_history": "user_id"}


def synthetic_log(n: int = 3000, days: int = 90, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, days * 86400, n), unit="s")
    log = pd.DataFrame({"user_id": rng.integers(1, 60, n), "item_id": rng.integers(10, 90, n),
                        "timestamp": ts.astype("datetime64[ns, UTC]"), "rating": rng.integers(1, 6, n).astype(float)})
    return log.drop_duplicates(["user_id", "item_id", "timestamp"]).sort_values("timestamp").reset_index(drop=True)


def day_of(log: pd.DataFrame) -> pd.Series:
    return (log.timestamp - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(days=1)


def write_earlier_state(folder: Path, state: RollingState, lists_in: str) -> None:
    """``state`` in the files of earlier versions: parquet totals and daily counts, the lists as .npy or list columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for kind, key in (("users", "user_id"), ("items", "item_id")):
        e = getattr(state, kind)
        totals = pd.DataFrame({key: e.ids, "first_day": e.first_day, "n": e.n, "rating_sum": e.rating_sum,
                               "last_day": e.last_day})
        days = [pd.DataFrame({key: e.ids[codes], "day": day, "count": counts}) for day, (codes, counts) in e.days.items()]
        pd.concat(days, ignore_index=True).to_parquet(folder / f"{kind[:-1]}_days.parquet", index=False)
        table = pa.Table.from_pandas(totals, preserve_index=False)
        if kind == "users" and lists_in == "parquet":
            for name in ("recent", "seen"):
                lists = [getattr(state, name)[c].tolist() for c in range(len(e.ids))]
                table = table.append_column(name, pa.array(lists, pa.large_list(pa.int64())))
        pq.write_table(table, folder / f"{kind}.parquet")
    if lists_in == "npy":
        for name in ("recent", "seen"):
            for part, array in zip(("start", "length", "values"), getattr(state, name).flush()):
                np.save(folder / f"{name}_{part}.npy", array)
    (folder / "meta.json").write_text(json.dumps({"next_day": state.next_day}))


def expected(log: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {**stats_tables(log), "user_history": history_table(log, HISTORY_CAP)}


def stored(data: Path) -> dict[str, pd.DataFrame]:
    return {name: read_parts(data, name) for name in KEYS}


def assert_same_rows(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for name, key in KEYS.items():
        a = got[name].sort_values([key, TS], kind="stable").reset_index(drop=True)
        b = want[name].sort_values([key, TS], kind="stable").reset_index(drop=True)
        if name == "user_history":
            a = a.assign(**{c: a[c].map(list) for c in ("user_recent_items", "user_seen_items")})
            b = b.assign(**{c: b[c].map(list) for c in ("user_recent_items", "user_seen_items")})
        pd.testing.assert_frame_equal(a[b.columns], b, check_exact=True)


class TestRolling:
    @pytest.mark.parametrize("n_batches", [1, 5, 23])
    def test_batches_through_a_saved_state_equal_one_full_build(self, tmp_path: Path, n_batches: int) -> None:
        """Batches cut anywhere (mid-day too); the state goes through its files between batches."""
        log = synthetic_log()
        cuts = np.sort(np.random.default_rng(n_batches).choice(np.arange(1, len(log)), n_batches - 1, replace=False))
        rows: dict[str, dict[int, pd.DataFrame]] = {name: {} for name in KEYS}
        done = log.iloc[:0]
        for batch in np.split(log, cuts):
            state = load_state(tmp_path) or RollingState()
            since = pd.Timestamp("1970-01-01", tz="UTC") + pd.Timedelta(days=state.next_day or 0)
            pending = pd.concat([done[done.timestamp >= since], batch]) if state.next_day is not None else batch
            for r in advance(state, pending):
                rows["user_stats"][r.day], rows["item_stats"][r.day] = r.user_stats, r.item_stats
                if r.user_history is not None:
                    rows["user_history"][r.day] = r.user_history
            save_state(tmp_path, state)
            done = pd.concat([done, batch])
        assert_same_rows({n: pd.concat(v.values(), ignore_index=True) for n, v in rows.items()}, expected(log))

    @pytest.mark.parametrize("lists_in", ["npy", "parquet"])
    def test_a_state_of_an_earlier_version_loads_the_same_and_is_saved_anew(self, tmp_path: Path, lists_in: str) -> None:
        """Earlier versions kept parquet totals and rings, the lists as .npy files or as list columns of users.parquet."""
        log = synthetic_log(n=800, days=40)
        head, rest = log.iloc[:500], log.iloc[500:]
        state = RollingState()
        list(advance(state, head))
        write_earlier_state(tmp_path / "state", state, lists_in)
        old = load_state(tmp_path)
        assert old.next_day == state.next_day and np.array_equal(old.users.ids, state.users.ids)
        for lists in ("recent", "seen"):
            assert all(np.array_equal(getattr(old, lists)[c], getattr(state, lists)[c]) for c in range(len(state.users.ids)))
        assert np.array_equal(old.distinct, state.distinct)
        for kind in ("users", "items"):
            a, b = getattr(old, kind), getattr(state, kind)
            assert all(np.array_equal(a.trailing(state.next_day, d), b.trailing(state.next_day, d)) for d in (7, 30))
        pending = pd.concat([head[day_of(head) >= state.next_day], rest])
        list(advance(old, pending))
        save_state(tmp_path, old)
        assert not list((tmp_path / "state").glob("*.parquet")) and not list((tmp_path / "state").glob("*.npy"))
        again, want = load_state(tmp_path), RollingState()
        list(advance(want, log))
        assert again.next_day == want.next_day and np.array_equal(again.users.n, want.users.n)
        assert all(np.array_equal(again.seen[c], want.seen[c]) for c in range(len(want.users.ids)))

    def test_item_lists_keep_every_array_and_drop_stale_values_once_they_are_half(self) -> None:
        lists = ItemLists()
        lists.grow(3)
        want = {0: np.array([1, 2]), 1: np.array([], np.int64), 2: np.array([7])}
        for code, values in want.items():
            lists[code] = values
        sizes = []
        for round_ in range(4):  # user 0's array replaced each time: the old copies go stale
            want[0] = np.arange(round_ + 3)
            lists[0] = want[0]
            start, length, values = lists.flush()
            sizes.append(len(values))
            assert all(np.array_equal(lists[c], want[c]) for c in want)
            assert np.array_equal(ItemLists(start, length, values)[0], want[0])
        assert sizes == [4, 8, 6, 12]  # appended; appended; 13 values for 6 live ones: rewritten; appended

    def test_a_batch_before_the_state_is_refused(self) -> None:
        log = synthetic_log(n=200, days=10)
        state = RollingState()
        list(advance(state, log))
        with pytest.raises(ValueError, match="before the state's next day"):
            list(advance(state, log.iloc[:5]))


class TestIngestedParts:
    def test_movielens_bootstrap_equals_the_full_recomputation(self, tmp_path: Path, movielens: RawData,
                                                                    ml_repo: Path) -> None:
        inter = movielens.interactions
        assert_same_rows(stored(ml_repo / "data"), expected(inter))  # week by week equals this: test_ingest

    def test_synthetic_batches_late_events_and_a_window(self, tmp_path: Path) -> None:
        """Daily batches, one of them late (before the state: the whole log is recomputed), equal one build."""
        log = synthetic_log(n=1500, days=30, seed=3)
        repo = copy_feature_repo(tmp_path / "features")
        day = log.timestamp.dt.floor("D")
        late = log.sample(20, random_state=0)
        on_time = log.drop(late.index)
        for _, batch in on_time.groupby(day[on_time.index]):
            ingest(batch, repo, materialize=False)
        result = ingest(late, repo, materialize=False)
        assert result.added == len(late) and result.recomputed_from.startswith(f"{log.timestamp.min():%Y-%m-%d}")
        assert_same_rows(stored(repo / "data"), expected(log))
        window = pull_window(repo, "2024-03-10", "2024-03-20")
        assert len(window) == int(((log.timestamp >= "2024-03-10") & (log.timestamp < "2024-03-20")).sum())
        assert not window.isna().any().any()

    @pytest.mark.parametrize("dies", ["before_the_commit", "while_applying_it"])
    def test_an_ingest_dying_in_the_middle_of_its_state_save_is_retried_to_the_oracles_rows(
        self, tmp_path: Path, monkeypatch, dies: str
    ) -> None:
        """The state is saved after the parts and before the log: the retry of the batch must still be exact."""
        from recsys_retrain.data import arrays

        log = synthetic_log(n=1500, days=30, seed=3)
        repo = copy_feature_repo(tmp_path / "features")
        batches = [b for _, b in log.groupby(log.timestamp.dt.floor("D"))]
        for batch in batches[:10]:
            ingest(batch, repo, materialize=False)
        died = self.dying(monkeypatch, arrays, dies)
        with pytest.raises(died):
            ingest(batches[10], repo, materialize=False)
        monkeypatch.undo()
        for batch in batches[10:]:
            ingest(batch, repo, materialize=False)
        assert_same_rows(stored(repo / "data"), expected(log))

    def test_a_batch_after_one_that_died_before_saving_its_state_rewrites_what_that_one_wrote(
        self, tmp_path: Path, monkeypatch
    ) -> None:
        """The dead batch's events were never stored: the parts it wrote from them must not stand."""
        from recsys_retrain.data import arrays

        log = synthetic_log(n=1500, days=30, seed=3)
        repo = copy_feature_repo(tmp_path / "features")
        batches = [b for _, b in log.groupby(log.timestamp.dt.floor("D"))]
        kept, lost = batches[9].iloc[: len(batches[9]) // 2], batches[9].iloc[len(batches[9]) // 2 :]
        for batch in [*batches[:9], kept]:
            ingest(batch, repo, materialize=False)
        died = self.dying(monkeypatch, arrays, "before_the_commit")
        with pytest.raises(died):
            ingest(lost, repo, materialize=False)  # more of the state's day: it rewrote the next day's stamp
        monkeypatch.undo()
        for batch in batches[10:]:  # the next day's batch alone would not rewrite that stamp
            ingest(batch, repo, materialize=False)
        assert_same_rows(stored(repo / "data"), expected(pd.concat([*batches[:9], kept, *batches[10:]])))

    @staticmethod
    def dying(monkeypatch, arrays, where: str) -> type[Exception]:
        """Makes the next state commit raise (as if killed) before its meta is written, or after one patch."""
        class Died(Exception):
            pass

        if where == "before_the_commit":
            monkeypatch.setattr(arrays, "_savez", lambda *_: (_ for _ in ()).throw(Died()))
        else:
            real = arrays.ArrayFolder._patch
            done: list[str] = []

            def patch_once(self, spec, name, patches):
                if done:
                    raise Died
                real(self, spec, name, patches)
                done.append(name)

            monkeypatch.setattr(arrays.ArrayFolder, "_patch", patch_once)
        return Died

    def test_a_batch_rewrites_no_stamp_before_its_first_day_and_patches_the_state(self, tmp_path: Path) -> None:
        """Stamps whose rows cannot have changed stay the same files; the state's arrays keep their files."""
        log = synthetic_log(n=600, days=12, seed=5)
        head = log[log.timestamp < "2024-03-08"]
        later = log[(log.timestamp >= "2024-03-09") & log.user_id.isin(head.user_id) & log.item_id.isin(head.item_id)]
        repo = copy_feature_repo(tmp_path / "features")
        ingest(head, repo, materialize=False)
        data = repo / "data"
        inodes = {p: p.stat().st_ino for name in KEYS for p in (data / name).glob("*.parquet")}
        arrays_before = load_meta(data)["arrays"]
        ingest(later, repo, materialize=False)
        kept = {p for p, ino in inodes.items() if p.exists() and p.stat().st_ino == ino}
        assert {p.name for p in kept if p.parent.name == "user_stats"} == {p.name for p in inodes if p.parent.name == "user_stats"
                                                                           and p.name <= "2024-03-08.parquet"}
        arrays_after = load_meta(data)["arrays"]
        assert all(arrays_after[name]["file"] == spec["file"] for name, spec in arrays_before.items()
                   if not name.split("_")[1].startswith("day"))
        assert arrays_after["seen_values"]["length"] > arrays_before["seen_values"]["length"]
        assert_same_rows(stored(data), expected(pd.concat([head, later])))


def load_meta(data: Path) -> dict:
    return json.loads((data / "state" / "meta.json").read_text())
