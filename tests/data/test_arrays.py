"""recsys_retrain.data.arrays: arrays changed in place, never left half-written by a process that dies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys_retrain.data import arrays
from recsys_retrain.data.arrays import ArrayFolder, Patch, Replace


class Died(Exception):
    """Stands for the process being killed at that point."""


def start(folder: Path) -> ArrayFolder:
    store = ArrayFolder(folder)
    store.commit({"n": Replace(np.arange(5)), "sum": Replace(np.linspace(0, 1, 5)), "ids": Replace(np.arange(5) * 10)},
                 {"day": 1})
    return store


def second_commit(store: ArrayFolder) -> None:
    store.commit({
        "n": Patch(7, at=np.array([1, 3]), values=np.array([-1, -3]), offset=5, block=np.array([50, 60])),
        "sum": Patch(7, at=np.array([0]), values=np.array([9.5]), offset=5, block=np.array([2.0, 3.0])),
        "ids": Patch(7, offset=5, block=np.array([70, 80])),
    }, {"day": 2})


WANT = {"n": [0, -1, 2, -3, 4, 50, 60], "sum": [9.5, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0], "ids": [0, 10, 20, 30, 40, 70, 80]}
BEFORE = {"n": [0, 1, 2, 3, 4], "sum": [0.0, 0.25, 0.5, 0.75, 1.0], "ids": [0, 10, 20, 30, 40]}


class TestArrayFolder:
    def test_patches_change_the_files_in_place_and_replacements_get_new_ones(self, tmp_path: Path) -> None:
        store = start(tmp_path)
        files = {name: spec["file"] for name, spec in store.meta()["arrays"].items()}
        second_commit(store)
        assert {name: store.read(name).tolist() for name in WANT} == WANT and store.open()["extra"] == {"day": 2}
        assert {name: spec["file"] for name, spec in store.meta()["arrays"].items()} == files
        store.commit({"n": Replace(np.array([7]))}, {"day": 3}, drop=("sum",))
        assert store.read("n").tolist() == [7] and store.read("n", mmap=True).tolist() == [7]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["meta.json", files["ids"], "n.3.bin"])

    def test_a_commit_dying_while_it_applies_its_journal_is_completed_by_the_next_open(self, tmp_path: Path,
                                                                                      monkeypatch) -> None:
        store = start(tmp_path)
        patched, real = [], ArrayFolder._patch

        def dies_after_one(self, spec, name, patches):
            if patched:
                raise Died
            real(self, spec, name, patches)
            patched.append(name)

        monkeypatch.setattr(ArrayFolder, "_patch", dies_after_one)
        with pytest.raises(Died):
            second_commit(store)
        monkeypatch.undo()
        assert patched == ["ids"] and store.meta()["journal"]  # committed, one array of three patched
        again = ArrayFolder(tmp_path)
        assert again.open()["extra"] == {"day": 2} and not again.meta()["journal"]
        assert {name: again.read(name).tolist() for name in WANT} == WANT
        assert not list(tmp_path.glob("journal*"))

    def test_a_commit_dying_before_its_meta_leaves_the_previous_arrays(self, tmp_path: Path, monkeypatch) -> None:
        store = start(tmp_path)

        def dies(*_args, **_kwargs):
            raise Died

        monkeypatch.setattr(arrays, "write_json", dies)
        with pytest.raises(Died):
            second_commit(store)
        monkeypatch.undo()
        assert store.open()["extra"] == {"day": 1}
        assert {name: store.read(name).tolist() for name in BEFORE} == BEFORE
        second_commit(store)  # the journal the dead commit left is replaced, not applied
        assert {name: store.read(name).tolist() for name in WANT} == WANT and len(list(tmp_path.glob("journal*"))) == 0

    def test_patching_an_array_it_does_not_have_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no such array"):
            start(tmp_path).commit({"other": Patch(1, offset=0, block=np.array([1]))}, {})
