"""Failed tasks leave one structured event each; a failed replay names the task and its error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from recsys_retrain.alerts import error_line, failures, record, task_failed, task_retried
from recsys_retrain.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_error_line_is_the_type_and_the_first_line_of_the_message():
    assert error_line(ValueError("no users\nin the window")) == "ValueError: no users"
    assert error_line(KeyError()) == "KeyError" and error_line(None) == "unknown error"


def test_a_failed_task_is_recorded_as_one_json_line_and_read_back_by_run(tmp_path):
    settings = Settings(home=tmp_path / "home", monitoring={"enabled": False})  # the line only (tests/monitoring: the tag)
    for run_id, task_id in (("r1", "pull"), ("r2", "gate")):
        ti = SimpleNamespace(dag_id="retrain_scheduled", task_id=task_id, run_id=run_id, try_number=3)
        task_failed({"ti": ti, "exception": RuntimeError(f"{task_id} broke\ntraceback")}, settings)
    record({"event": "drift", "severity": "major"}, settings)  # other events share the file
    lines = (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["time"] for line in lines)
    (only,) = failures(settings, "retrain_scheduled", "r2")
    assert (only["task_id"], only["error"], only["try_number"]) == ("gate", "RuntimeError: gate broke", 3)
    assert [f["task_id"] for f in failures(settings)] == ["pull", "gate"]



def test_a_retried_try_is_recorded_apart_from_the_failures(tmp_path, caplog):
    settings = Settings(home=tmp_path / "home")
    ti = SimpleNamespace(dag_id="retrain_scheduled", task_id="cycle.train", run_id="r1", try_number=1)
    task_retried({"ti": ti, "exception": RuntimeError("worker lost")}, settings)
    (line,) = (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()
    assert {k: v for k, v in json.loads(line).items() if k != "time"} == {
        "event": "task_retried", "dag_id": "retrain_scheduled", "task_id": "cycle.train", "run_id": "r1",
        "try_number": 1, "error": "RuntimeError: worker lost"}
    assert failures(settings) == []  # a retry is no failure of the run
    assert "task_retried: retrain_scheduled.cycle.train (run r1, try 1): RuntimeError: worker lost" in caplog.text


DAG = '''
import sys
import pendulum
from airflow.sdk import dag, task
sys.path.append({dags!r})
from recsys_common import DEFAULT_ARGS

@dag(dag_id="boom", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False,
     default_args=DEFAULT_ARGS)
def boom():
    @task
    def fine():
        return 1

    @task
    def explode(x):
        raise ValueError("cold-user mean is NaN\\nsecond line")

    explode(fine())

dag = boom()
'''

RUN = '''
from recsys_retrain.airflow_local import migrate_airflow_db, quiet_libraries
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings
from recsys_retrain.timeline import _run
import importlib.util, sys
settings = Settings()
migrate_airflow_db(settings)
spec = importlib.util.spec_from_file_location("boom", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
quiet_libraries()
try:
    _run(module.dag, "boom", {{}}, settings)
except PipelineError as err:
    print("ERROR:", err)
'''


@pytest.mark.slow
def test_a_failed_dag_run_names_the_failing_task_and_its_error_line(tmp_path):
    from recsys_retrain.resources import shipped

    dag_file = tmp_path / "dags" / "boom.py"
    dag_file.parent.mkdir()
    dag_file.write_text(DAG.format(dags=str(shipped("dags"))))
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_DAGS_FOLDER": str(dag_file.parent)}
    done = subprocess.run([sys.executable, "-c", RUN.format(), str(dag_file)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ERROR: boom (boom) failed at task explode: ValueError: cold-user mean is NaN"
    (event,) = failures(Settings(home=tmp_path / "home"), "boom")
    assert event["task_id"] == "explode"


class Hook:
    """A local webhook: a real ``http.server`` on 127.0.0.1 that keeps the JSON bodies it receives."""

    def __init__(self, status: int = 200):
        import http.server
        import threading

        received, hook_status = [], status

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  # http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(hook_status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_event_is_one_json_line_and_one_post_to_the_webhook(tmp_path):
    from recsys_retrain.alerts import emit

    hook = Hook()
    try:
        settings = Settings(home=tmp_path / "home", alerts={"webhook_url": hook.url})
        sent = emit({"event": "revert", "window": "w", "version": 3, "reason": "worse twice"}, settings)
    finally:
        hook.close()
    assert sent["delivered"] is True
    (line,) = (tmp_path / "home" / "alerts.jsonl").read_text().splitlines()
    assert json.loads(line) == hook.received[0] and hook.received[0]["event"] == "revert"


def test_a_failing_webhook_is_retried_then_given_up_without_failing_the_caller(tmp_path, caplog):
    from recsys_retrain.alerts import emit

    hook = Hook(status=503)
    try:
        settings = Settings(home=tmp_path / "home", alerts={"webhook_url": hook.url, "webhook_attempts": 3,
                                                           "webhook_backoff_s": 0.01})
        sent = emit({"event": "drift", "window": "w", "severity": "major"}, settings)
    finally:
        hook.close()
    assert sent["delivered"] is False and len(hook.received) == 3  # three attempts, then a warning
    assert "webhook" in caplog.text and "503" in caplog.text
    assert json.loads((tmp_path / "home" / "alerts.jsonl").read_text())["severity"] == "major"  # the line is the record
    with pytest.raises(ValueError, match="unknown alert event"):
        emit({"event": "something"}, settings)


def test_the_record_step_with_an_unreachable_webhook_still_logs_its_run(tmp_path, monkeypatch):
    from recsys_retrain import cycle
    from tests.monitoring.conftest import pulled, write_week

    settings = Settings(home=tmp_path / "home", alerts={"webhook_url": "http://127.0.0.1:9/down", "webhook_attempts": 2,
                                                       "webhook_backoff_s": 0.01, "webhook_timeout_s": 1})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    summary = write_week(settings, 1)
    result = cycle.record(pulled(settings, 1), "drift_watch", "r1", summary, settings=settings)
    assert result["mlflow_run_id"] and result["alerts"] == ["drift"]
    import mlflow

    assert "alert.drift" in mlflow.get_run(result["mlflow_run_id"]).data.tags  # the event's MLflow tag
    mlflow.set_tracking_uri(None)
