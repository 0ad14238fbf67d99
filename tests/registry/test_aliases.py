"""Aliases and their history: every move logged, moves under a lock with compare-and-set, intents rolled forward."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from recsys_retrain.errors import RegistryError
from recsys_retrain.registry.aliases import LOCK_SUFFIX, AliasMove, history, recover
from recsys_retrain.registry.candidates import alias, champion
from recsys_retrain.settings import Settings
from tests.registry.conftest import aliases, client, log, promote


def test_every_alias_move_is_kept_with_who_when_from_to_and_why(settings):
    v1 = log(settings, "w1", 0.1)
    promote(settings, v1, None)
    v2 = log(settings, "w2", 0.2, seed=1)
    second = promote(settings, v2, 1)
    moves = history(settings)
    assert [(m.seq, m.alias, m.from_version, m.to_version) for m in moves] == [
        (1, "challenger", None, 1), (2, "champion", None, 1), (3, "challenger", 1, 2),
        (4, "previous", None, 1), (5, "champion", 1, 2),
    ]
    last = moves[-1]
    assert last.reason == second.reason and last.actor.startswith("gate (") and "pid" in last.actor
    assert moves[3].op == last.op != moves[1].op  # previous and champion moved as one operation
    assert pd.Timestamp(last.at).tzinfo is not None and v2.run_id in last.evidence
    assert AliasMove.from_dict(json.loads(json.dumps(last.to_dict()))) == last
    assert settings.model_name + LOCK_SUFFIX not in {
        m.name for m in client(settings).search_registered_models()
    }  # the lock is released


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from recsys_retrain.gate import GateDecision
    from recsys_retrain.registry.client import configure
    from recsys_retrain.registry.promotion import apply_decision
    from recsys_retrain.settings import Settings
    home, version, sync = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    s = Settings(home=home)
    configure(s)
    (sync / f"ready-{version}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    d = GateDecision("ndcg_at_10", 0.2, 0.1, 0.001, True, f"racer v{version} beats v1", version, 1)
    print(json.dumps({"version": version, "promoted": apply_decision(d, s)}))
""")


@pytest.mark.slow
def test_two_racing_gates_leave_one_champion_and_the_right_previous(settings, tmp_path):
    promote(settings, log(settings, "w1", 0.1), None)
    log(settings, "w2", 0.2, seed=1)
    log(settings, "w3", 0.2, seed=2)
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(settings.home), str(v), str(sync)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for v in (2, 3)
    ]
    deadline = time.monotonic() + 120
    while not all((sync / f"ready-{v}").exists() for v in (2, 3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (sync / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    winners = [r["version"] for r in results if r["promoted"]]
    assert len(winners) == 1
    state = aliases(settings)
    assert state["champion"] == winners[0] and state["previous"] == 1
    moves = [m for m in history(settings) if m.alias in ("champion", "previous")]
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [
        ("champion", None, 1), ("previous", None, 1), ("champion", 1, winners[0]),
    ]


# --- a real tracking server on PostgreSQL, with the network cut mid-promotion ------------------


class CutProxy:
    """HTTP proxy in front of the tracking server; ``cut_after(n)`` answers 503 to alias writes after n."""

    def __init__(self, upstream: int) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.allowed: int | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "alias" in self.path and self.command in ("POST", "DELETE") and proxy.allowed is not None:
                    if proxy.allowed <= 0:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    proxy.allowed -= 1
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def cut_after(self, n: int | None) -> None:
        self.allowed = n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_server(tmp_path, monkeypatch):
    """``mlflow server`` on a fresh PostgreSQL database at 127.0.0.1; dropped afterwards."""
    import shutil
    import uuid

    pytest.importorskip("psycopg2")
    if shutil.which("psql") is None:
        pytest.skip("psql not installed")
    db = f"mlflow_test_{uuid.uuid4().hex[:8]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    created = subprocess.run([*psql, f"CREATE DATABASE {db}"], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not usable: {created.stderr.strip()}")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"postgresql://postgres@127.0.0.1:5432/{db}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no huey job runner: the test needs none
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        mlflow.set_tracking_uri(None)
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


@pytest.mark.slow
def test_on_a_postgres_tracking_server_a_cut_promotion_is_never_seen_half_done(postgres_server, tmp_path):
    proxy = CutProxy(postgres_server)
    s = Settings(home=tmp_path / "home", tracking_uri=f"http://127.0.0.1:{proxy.port}",
                 gate={"registry_retries": 2, "registry_backoff_s": 0.05})
    try:
        promote(s, log(s, "w1", 0.1), None)
        v2 = log(s, "w2", 0.2, seed=1)
        proxy.cut_after(1)  # `previous` moves, then every alias write fails
        with pytest.raises(RegistryError, match="after 2 attempts"):
            promote(s, v2, 1)
        raw = {k: int(v) for k, v in client(s).get_registered_model(s.model_name).aliases.items()}
        assert raw == {"challenger": 2, "champion": 1, "previous": 1}  # what MLflow holds during the outage
        assert champion(s).version == 2 and alias(s, "previous").version == 1  # what we read
        proxy.cut_after(None)  # the server is back
        assert recover(s)
        assert aliases(s) == {"challenger": 2, "champion": 2, "previous": 1}
        moves = history(s)
        assert [(m.alias, m.from_version, m.to_version) for m in moves[-2:]] == [("previous", None, 1),
                                                                                ("champion", 1, 2)]
        assert not recover(s)
    finally:
        proxy.server.shutdown()
