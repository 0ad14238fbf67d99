"""recsys_retrain.storage: URIs between tasks, files in place for file://, staged for any other fsspec protocol.

Two "workers" are two Settings with different homes (so different local folders and
scratch folders) that share only the storage URI: what one writes through
:func:`storage.step`, the other must read, whether the root is a ``file://`` folder
that is neither's home or fsspec's ``memory://`` (an object store in this process).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from recsys_retrain import storage
from recsys_retrain.errors import PipelineError
from recsys_retrain.io import write_json
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings
from recsys_retrain.storage import Store, to_paths, to_uris

START, END, CYCLE = "1998-01-05", "1998-01-12", "runs/19980105-19980112"


def write_plan(start: str, end: str, settings: Settings | None = None) -> dict:
    """A pull-like step: creates the cycle folder under the settings' runs_dir and writes into it."""
    p = CyclePaths.of(settings, start, end)
    write_json({"policy": "static"}, p.plan)
    write_json({"epoch": 0}, p.model_dir / "checkpoints" / "epoch-0.pt")
    return {"run_dir": str(p.root), "plan": str(p.plan), "rows": 3, "note": "/not/under/the/root"}


def read_plan(pulled: dict, settings: Settings | None = None) -> dict:
    """A later step: reads the plan by the path it was given, drops the checkpoint, writes a summary."""
    assert "://" not in pulled["run_dir"] and "://" not in pulled["plan"]
    p = CyclePaths(Path(pulled["run_dir"]))
    (p.model_dir / "checkpoints" / "epoch-0.pt").unlink()
    summary = write_json({"plan": json.loads(Path(pulled["plan"]).read_text())}, p.summary)
    return {"summary": str(summary), "run_dir": str(p.root)}


def worker(tmp_path: Path, name: str, uri: str) -> Settings:
    return Settings(home=tmp_path / name, storage={"uri": uri})


def bucket_files(settings: Settings) -> list[str]:
    root = storage.remote_root(Store.of(settings))
    prefix = str(root).rstrip("/") + "/"
    return sorted(str(o)[len(prefix):] for o in root.rglob("*") if o.is_file())


@pytest.fixture
def memory_uri() -> str:
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/retrain"  # fsspec's memory store is global: one bucket per test


class TestStore:
    store = Store("s3://bucket/retrain", Path("/scratch/t1"))

    def test_paths_and_uris_map_both_ways_under_the_root_only(self):
        path = "/scratch/t1/runs/19980105-19980112/model/model.pt"
        uri = "s3://bucket/retrain/runs/19980105-19980112/model/model.pt"
        assert self.store.uri_of(path) == uri and self.store.path_of(uri) == Path(path)
        assert self.store.uri_of("/scratch/t10/runs/x") is None and self.store.uri_of("runs/x") is None
        assert self.store.path_of("s3://bucket/retrain2/runs/x") is None and self.store.path_of("s3://other/x") is None

    def test_xcom_values_are_walked_and_other_values_pass_unchanged(self):
        value = {"run_dir": "/scratch/t1/runs/a", "files": ["/scratch/t1/runs/a/x.json", "/elsewhere/y"],
                 "n": 3, "reason": "drift minor", "nested": {"p": ("/scratch/t1",)}}
        uris = to_uris(value, self.store)
        assert uris == {"run_dir": "s3://bucket/retrain/runs/a",
                        "files": ["s3://bucket/retrain/runs/a/x.json", "/elsewhere/y"],
                        "n": 3, "reason": "drift minor", "nested": {"p": ("s3://bucket/retrain",)}}
        assert to_paths(uris, self.store) == value

    def test_a_path_into_the_staged_cycle_written_on_another_worker_becomes_its_uri(self):
        reused = {"checkpoint": "/other/scratch/task-x/runs/19980105-19980112/model/model.pt", "other": "/tmp/runs/b/c"}
        assert to_uris(reused, self.store, CYCLE) == {
            "checkpoint": f"s3://bucket/retrain/{CYCLE}/model/model.pt", "other": "/tmp/runs/b/c"}
        assert to_uris(reused, self.store) == reused  # only for the staged cycle folder

    def test_a_uri_outside_the_root_is_refused_with_one_line(self):
        with pytest.raises(PipelineError, match="not under the storage root s3://bucket/retrain"):
            self.store.key("s3://bucket/elsewhere/runs/a")
        assert self.store.key("/local/runs/a") is None and self.store.key(None) is None


class TestSettings:
    def test_the_default_root_is_the_home_as_a_file_uri(self, tmp_path):
        s = Settings(home=tmp_path / "home")
        assert s.storage_uri == f"file://{tmp_path / 'home'}" and s.runs_dir == tmp_path / "home" / "runs"
        assert storage.cycle_uri(START, END, s) == f"file://{tmp_path / 'home'}/{CYCLE}"

    def test_the_environment_names_the_root_and_a_file_root_holds_the_cycle_folders(self, tmp_path, monkeypatch):
        monkeypatch.setenv("RETRAIN_STORAGE__URI", f"file://{tmp_path / 'shared'}/")
        s = Settings(home=tmp_path / "home")
        assert s.storage_uri == f"file://{tmp_path / 'shared'}" and s.runs_dir == tmp_path / "shared" / "runs"

    def test_an_object_store_root_keeps_the_cycle_folders_in_scratch(self, tmp_path):
        s = Settings(home=tmp_path / "home", storage={"uri": "s3://bucket/retrain"})
        assert s.runs_dir == tmp_path / "home" / "scratch" / "runs"

    def test_a_root_without_a_scheme_is_refused(self, tmp_path):
        with pytest.raises(ValueError, match="storage.uri"):
            Settings(home=tmp_path, storage={"uri": "/srv/retrain"})


class TestFileRoot:
    def test_two_workers_sharing_a_file_bucket_read_each_others_outputs_in_place(self, tmp_path):
        uri = f"file://{tmp_path / 'bucket'}"
        a, b = worker(tmp_path, "a", uri), worker(tmp_path, "b", uri)
        pulled = storage.step(write_plan, START, END, folder=storage.cycle_uri(START, END, a), settings=a)
        assert pulled == {"run_dir": f"{uri}/{CYCLE}", "plan": f"{uri}/{CYCLE}/plan.json", "rows": 3,
                          "note": "/not/under/the/root"}
        out = storage.step(read_plan, pulled, settings=b)
        assert out == {"summary": f"{uri}/{CYCLE}/summary.json", "run_dir": f"{uri}/{CYCLE}"}
        assert json.loads((tmp_path / "bucket" / CYCLE / "summary.json").read_text()) == {"plan": {"policy": "static"}}
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing staged, nothing copied


class TestObjectStore:
    def test_two_workers_with_their_own_scratch_see_each_others_outputs_through_the_bucket(self, tmp_path, memory_uri):
        a, b = worker(tmp_path, "a", memory_uri), worker(tmp_path, "b", memory_uri)
        pulled = storage.step(write_plan, START, END, folder=storage.cycle_uri(START, END, a), settings=a)
        assert pulled["run_dir"] == f"{memory_uri}/{CYCLE}" and pulled["plan"] == f"{memory_uri}/{CYCLE}/plan.json"
        assert bucket_files(a) == [f"{CYCLE}/model/checkpoints/epoch-0.pt", f"{CYCLE}/plan.json"]

        out = storage.step(read_plan, pulled, settings=b)
        assert out == {"summary": f"{memory_uri}/{CYCLE}/summary.json", "run_dir": f"{memory_uri}/{CYCLE}"}
        assert bucket_files(b) == [f"{CYCLE}/plan.json", f"{CYCLE}/summary.json"]  # the deleted checkpoint too
        seen = storage.step(lambda p: json.loads(Path(p["summary"]).read_text()), out, settings=a)
        assert seen == {"plan": {"policy": "static"}}
        for home in (tmp_path / "a", tmp_path / "b"):  # each task's scratch folder is gone; nothing in place
            assert not list((home / "scratch").iterdir()) and not (home / "runs").exists()

    def test_a_failed_step_still_writes_back_what_it_wrote_and_raises(self, tmp_path, memory_uri):
        a = worker(tmp_path, "a", memory_uri)
        pulled = storage.step(write_plan, START, END, folder=storage.cycle_uri(START, END, a), settings=a)

        def crash_after_a_checkpoint(pulled: dict) -> None:
            write_json({"epoch": 1}, Path(pulled["run_dir"]) / "model" / "checkpoints" / "epoch-1.pt")
            raise RuntimeError("worker lost")

        with pytest.raises(RuntimeError, match="worker lost"):
            storage.step(crash_after_a_checkpoint, pulled, settings=worker(tmp_path, "b", memory_uri))
        assert f"{CYCLE}/model/checkpoints/epoch-1.pt" in bucket_files(a)  # a retry elsewhere resumes from it

    def test_reads_stage_earlier_cycles_beside_the_folder(self, tmp_path, memory_uri):
        a = worker(tmp_path, "a", memory_uri)
        for start, end in (("1997-12-22", "1997-12-29"), ("1997-12-29", "1998-01-05"), (START, END)):
            storage.step(write_plan, start, end, folder=storage.cycle_uri(start, end, a), settings=a)

        def plans_seen(pulled: dict, settings: Settings | None = None) -> list[str]:
            return sorted(p.parent.name for p in settings.runs_dir.glob("*/plan.json"))

        pulled = {"run_dir": storage.cycle_uri(START, END, a)}
        alone = storage.step(plans_seen, pulled, settings=a)
        with_earlier = storage.step(plans_seen, pulled, reads=("runs/*/plan.json",), settings=a)
        assert alone == ["19980105-19980112"]
        assert with_earlier == ["19971222-19971229", "19971229-19980105", "19980105-19980112"]

    def test_a_bare_local_path_is_used_as_it_is(self, tmp_path, memory_uri):
        folder = tmp_path / "cycle"
        folder.mkdir()
        got = storage.step(lambda p, settings=None: settings, {"run_dir": str(folder)}, settings=worker(
            tmp_path, "a", memory_uri))
        assert got.storage.scratch is None  # nothing staged: an XCom from before URIs, or a test's folder

    def test_a_consumer_of_a_mounted_volume_refuses_an_object_store(self, tmp_path, memory_uri):
        with pytest.raises(PipelineError, match="reads a mounted volume"):
            storage.mounted({"run_dir": f"{memory_uri}/{CYCLE}"}, worker(tmp_path, "a", memory_uri))
        uri = f"file://{tmp_path}"
        assert storage.mounted({"run_dir": f"{uri}/{CYCLE}"}, worker(tmp_path, "a", uri)) == {
            "run_dir": str(tmp_path / CYCLE)}
