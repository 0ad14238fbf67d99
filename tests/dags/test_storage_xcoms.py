"""What the retrain DAG's tasks hand each other are URIs under the storage root, and a cycle completes on a bucket.

The real ``retrain_scheduled`` DAG runs under ``dag.test()``; the pipeline's cycle steps
are replaced by small stubs that write and read real files in the cycle folder (the
storage adapter is under test here, not the training). Each stub refuses a URI among its
arguments and fails unless the files the steps before it wrote are there, so a run that
succeeds shows both sides: the steps got local paths holding the earlier steps' outputs,
and the XComs Airflow stored carry URIs only. With a ``memory://`` bucket (fsspec's, shared
by every task of the in-process run) each task stages the cycle folder into its own scratch
folder and writes back, and nothing is left in the worker's local folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

RUN = """
import functools, importlib.util, json, subprocess, sys
from pathlib import Path
from recsys_retrain import cycle
from recsys_retrain.io import write_json
from recsys_retrain.paths import CyclePaths

promote = sys.argv[2] == "promote"
calls = []


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def local(fn):
    @functools.wraps(fn)  # keeps the signature: storage.step passes settings= to the steps that take it
    def step(*args, **kwargs):
        given = [v for v in strings([args, {k: v for k, v in kwargs.items() if k != "settings"}]) if "://" in v]
        assert not given, f"{fn.__name__} was given URIs: {given}"
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    return step


def folder(pulled):
    p = CyclePaths(Path(pulled["run_dir"]))
    assert p.root.is_dir(), p.root
    return p


def need(*paths):
    for path in paths:
        assert Path(path).is_file(), f"{path} is missing: an earlier task's output did not reach this task"


def pull(start, end, settings=None, overrides=None):
    p = CyclePaths.of(settings, start, end)
    for path in (p.history, p.holdout, p.reference, p.catalogue):
        write_json({"rows": 3}, path)
    return {"run_dir": str(p.root), "start": start, "end": end, "rows_history": 3, "rows_window": 3}


def validate(pulled, settings=None, overrides=None):
    p = folder(pulled)
    need(p.history, p.holdout)
    write_json({"users": 3}, p.profile)
    return {**pulled, "bad_window": 0, "profile": str(p.profile)}


def drift(pulled, settings=None, overrides=None):
    p = folder(pulled)
    need(p.profile)
    report = write_json({"verdict": {"severity": "none"}}, p.drift_dir / "drift.json")
    return {"severity": "none", "html": None, "json": str(report), "drifted": [], "reason": "stub: no drift"}


def calibrate(pulled, drift_result, settings=None, overrides=None):
    p = folder(pulled)
    need(drift_result["json"])
    write_json({"policy": "static", "plan": None}, p.plan)
    return {"policy": "static", "plan": None, "path": str(p.plan)}


def train(pulled, settings=None, overrides=None, plan=None):
    p = folder(pulled)
    need(plan["path"], p.history)
    model = write_json({"weights": [1, 2]}, p.model_dir / "model.pt")
    (p.model_dir / "checkpoints").mkdir()
    write_json({"epoch": 0}, p.model_dir / "checkpoints" / "epoch-0.pt")  # an epoch checkpoint ...
    (p.model_dir / "checkpoints" / "epoch-0.pt").unlink()  # ... removed when the training ends
    trace = write_json({"events": []}, p.model_dir / "trace.json")
    return {"checkpoint": str(model), "trace": str(trace), "epoch_losses": [0.5, 0.4], "seconds": 0.1}


def evaluate(pulled, trained, settings=None, overrides=None):
    p = folder(pulled)
    need(trained["checkpoint"], trained["trace"])
    write_json({"challenger": {}, "champion": None}, p.per_user)
    return {"per_user": str(p.per_user), "challenger": {"ndcg_at_10": 0.3}, "champion": None}


def judge(pulled, drift_result, trained, evaluated, settings=None, overrides=None):
    p = folder(pulled)
    need(evaluated["per_user"], trained["checkpoint"])
    write_json({"promote": promote}, p.decision)
    return {**pulled, "promote": promote, "reason": "stub decision", "decision": str(p.decision), "version": 1,
            "window": f"{pulled['start']}/{pulled['end']}", "drift": "none"}


def refit(pulled, trained, judged, settings=None, overrides=None):
    p = folder(pulled)
    need(judged["decision"], trained["checkpoint"])
    model = write_json({"weights": [3]}, p.refit_dir / "model.pt")
    return {"served_version": 2, "reason": "stub refit", "checkpoint": str(model)}


def summary(judged, served):
    p = folder(judged)
    need(judged["decision"])
    return write_json({"promoted": judged["promote"], "version": served, "run_dir": str(p.root)}, p.summary)


def promote_(judged, refitted=None, settings=None, overrides=None):
    need(refitted["checkpoint"])
    return json.loads(summary(judged, refitted["served_version"]).read_text())


def keep(judged):
    return json.loads(summary(judged, None).read_text())


def decided(judged):
    p = folder(judged)
    need(p.summary)
    return json.loads(p.summary.read_text())


def publish(settings=None, overrides=None):
    return {"version": 2, "users": 3, "written": True, "seconds": 0.1, "reason": "stub publication"}


def record(pulled, dag_id, run_id, summary=None, settings=None, overrides=None):
    p = folder(pulled)
    need(p.profile, p.drift_dir / "drift.json", p.summary)
    assert summary["run_dir"] == str(p.root), summary
    return {"mlflow_run_id": None, "alerts": []}


promote_.__name__ = "promote"
for fn in (pull, validate, drift, calibrate, train, evaluate, judge, refit, promote_, keep, decided, publish, record):
    setattr(cycle, fn.__name__, local(fn))

done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-2000:]
spec = importlib.util.spec_from_file_location("retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = {"window_start": "1998-01-05T00:00:00+00:00", "window_end": "1998-01-12T00:00:00+00:00"}
dag_run = module.dag.test(run_conf=run)

from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select

with create_session() as session:
    rows = session.scalars(select(XComModel).where(XComModel.run_id == dag_run.run_id)).all()
    xcoms = {f"{r.task_id}:{r.key}": XComModel.deserialize_value(r) for r in rows}

from recsys_retrain import storage
from recsys_retrain.settings import get_settings

s = get_settings()
bucket = storage.remote_root(storage.Store.of(s)) if not s.storage_uri.startswith("file://") else None
stored = sorted(str(o)[len(s.storage_uri) + 1:] for o in bucket.rglob("*") if o.is_file()) if bucket else None
print(json.dumps({"run": str(dag_run.state), "tasks": {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()},
                  "calls": calls, "xcoms": xcoms, "root": s.storage_uri, "stored": stored}, default=str))
"""


def run_dag(tmp_path: Path, decision: str, storage_uri: str | None) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "RETRAIN_HOME": str(tmp_path / "home"),
    }
    env.pop("RETRAIN_STORAGE__URI", None)
    if storage_uri:
        env["RETRAIN_STORAGE__URI"] = storage_uri
    out = subprocess.run([sys.executable, "-c", RUN, str(DAGS / "retrain.py"), decision],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["run"] == "success", result["tasks"]
    return result


def path_strings(value):
    """Every string in an XCom that names a file or folder: a URI, or an absolute local path."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in path_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in path_strings(v)]
    return [value] if isinstance(value, str) and ("://" in value or value.startswith("/")) else []


CYCLE = "runs/19980105-19980112"


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["promote", "keep"])
def test_the_xcoms_of_a_retrain_run_carry_uris_under_the_storage_root(tmp_path, decision):
    result = run_dag(tmp_path, decision, None)
    root = f"file://{tmp_path / 'home'}"
    assert result["root"] == root  # the default: file:// + the home
    paths = [s for v in result["xcoms"].values() for s in path_strings(v)]
    assert len(paths) >= 10 and all(p.startswith(f"{root}/{CYCLE}") for p in paths), paths
    xcoms = result["xcoms"]
    assert xcoms["cycle.pull:return_value"]["run_dir"] == f"{root}/{CYCLE}"
    assert xcoms["cycle.train:return_value"]["checkpoint"] == f"{root}/{CYCLE}/model/model.pt"
    assert xcoms["cycle.calibrate:return_value"]["path"] == f"{root}/{CYCLE}/plan.json"
    assert xcoms["cycle.decided:return_value"]["run_dir"] == f"{root}/{CYCLE}"  # read back from summary.json
    assert (tmp_path / "home" / CYCLE / "summary.json").exists()  # file://: the files are where the URIs say


@pytest.mark.slow
def test_a_cycle_completes_with_its_folder_in_a_bucket_that_is_not_the_local_folder(tmp_path):
    bucket = "memory://recsys-test-bucket/retrain"
    result = run_dag(tmp_path, "promote", bucket)
    assert result["tasks"]["cycle.keep"] == "skipped"
    assert {t: s for t, s in result["tasks"].items() if t != "cycle.keep"} == {
        t: "success" for t in result["tasks"] if t != "cycle.keep"}
    assert result["calls"] == ["pull", "validate", "drift", "calibrate", "train", "evaluate", "judge", "refit",
                               "promote", "publish", "decided", "record"]
    paths = [s for v in result["xcoms"].values() for s in path_strings(v)]
    assert paths and all(p.startswith(f"{bucket}/{CYCLE}") for p in paths), paths
    assert result["stored"] == [f"{CYCLE}/{name}" for name in (
        "catalogue.parquet", "drift/drift.json", "gate_decision.json", "history.parquet", "holdout.parquet",
        "model/model.pt", "model/trace.json", "per_user_metrics.json", "plan.json", "profile.json",
        "reference.parquet", "refit/model.pt", "summary.json")]  # the removed epoch checkpoint is gone there too
    assert not (tmp_path / "home" / "runs").exists()  # nothing was written in place ...
    assert not any((tmp_path / "home" / "scratch").iterdir())  # ... and every task removed its scratch folder
