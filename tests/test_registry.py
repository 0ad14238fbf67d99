"""Registry: the pure gate rule on numbers, then real MLflow on SQLite in tmp_path."""

from __future__ import annotations

import json
import math
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
import torch
from mlflow import MlflowClient
from torch import nn

from recsys_retrain import registry
from recsys_retrain.errors import RegistryError
from recsys_retrain.registry import Candidate, GateDecision
from recsys_retrain.settings import GateSettings, Settings

METRIC = "ndcg_at_10"
NAN, INF = math.nan, math.inf


def client(s: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)


def aliases(s: Settings) -> dict[str, int]:
    return {k: int(v) for k, v in client(s).get_registered_model(s.model_name).aliases.items()}


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def log(s: Settings, window: str, value: float, seed: int = 0, **kwargs) -> Candidate:
    return registry.log_candidate(
        tiny_model(seed), settings=s, window=window, params={"lr": 0.1, "epochs": 2}, metrics={METRIC: value}, **kwargs
    )


def gate(s: Settings, cand: Candidate, value: float, champion_value: float | None) -> GateDecision:
    current = registry.champion(s)
    decision = registry.decide(
        value,
        champion_value,
        s.gate,
        challenger_version=cand.version,
        champion_version=current.version if current else None,
    )
    registry.apply_decision(decision, s)
    return decision


# --- decide(): a pure function, no MLflow ---------------------------------------------

DECIDE_CASES = [
    # id, challenger, champion, min_delta, promote, words in the reason
    ("first-model", 0.10, None, 0.0, True, ["no champion", "0.1"]),
    ("better", 0.12, 0.11, 0.0, True, ["0.12 > champion 0.11", "min_delta 0"]),
    ("worse", 0.10, 0.11, 0.0, False, ["0.1 <= champion 0.11"]),
    ("equal", 0.11, 0.11, 0.0, False, ["0.11 <= champion 0.11"]),
    ("better-within-min-delta", 0.115, 0.11, 0.01, False, ["0.115 <= champion 0.11 + min_delta 0.01"]),
    ("better-beyond-min-delta", 0.125, 0.11, 0.01, True, ["0.125 > champion 0.11 + min_delta 0.01"]),
    ("nan-challenger-first-model", NAN, None, 0.0, False, ["nan", "never promotes"]),
    ("nan-challenger", NAN, 0.11, 0.0, False, ["nan"]),
    ("nan-champion", 0.12, NAN, 0.0, False, ["champion", "nan"]),
    ("inf-challenger", INF, 0.11, 0.0, False, ["inf"]),
]


@pytest.mark.parametrize(
    "challenger,champion,min_delta,promote,words",
    [case[1:] for case in DECIDE_CASES],
    ids=[case[0] for case in DECIDE_CASES],
)
def test_decide(challenger, champion, min_delta, promote, words):
    d = registry.decide(challenger, champion, GateSettings(metric=METRIC, min_delta=min_delta))
    assert d.promote is promote
    assert d.metric == METRIC and d.min_delta == min_delta
    assert METRIC in d.reason
    for word in words:
        assert word in d.reason


def test_dataclasses_round_trip_through_json():
    d = registry.decide(0.12, 0.11, GateSettings(), challenger_version=2, champion_version=1)
    assert GateDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    c = Candidate(run_id="abc", version=3, model_uri="models:/two_tower/3", window="w")
    assert Candidate.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Candidate.from_dict({**c.to_dict(), "version": "3", "added_later": 1}) == c


# --- MLflow on SQLite ------------------------------------------------------------------


def test_configure_creates_the_experiment_once_with_the_artifact_root(settings):
    first = registry.configure(settings)
    assert registry.configure(settings) == first
    exp = client(settings).get_experiment(first)
    assert exp.name == settings.model_name
    assert exp.artifact_location == settings.artifact_root.as_uri()


def test_a_client_for_another_store_still_reads_its_own_registry(settings, tmp_path):
    """configure() sets no global registry URI, so MlflowClient(tracking_uri=other) stays on `other`."""
    other = Settings(home=tmp_path / "other")
    log(other, "w1", 0.1)
    log(settings, "w1", 0.1)
    assert [m.name for m in MlflowClient(tracking_uri=other.mlflow_uri).search_registered_models()] == ["two_tower"]
    log(settings, "w2", 0.1)
    versions = MlflowClient(tracking_uri=other.mlflow_uri).search_model_versions("name='two_tower'")
    assert len(versions) == 1


def test_log_candidate_registers_version_1_as_challenger(settings, tmp_path, capfd):
    report = tmp_path / "report.html"
    report.write_text("<html>drift</html>")
    cand = log(settings, "w1", 0.1, artifacts={"drift.html": report}, tags={"drift.severity": "minor"})

    assert (cand.version, cand.window, cand.model_uri) == (1, "w1", f"models:/{settings.model_name}/1")
    assert aliases(settings) == {"challenger": 1}
    c = client(settings)
    run = c.get_run(cand.run_id)
    assert run.data.metrics == {METRIC: 0.1}
    assert run.data.params == {"lr": "0.1", "epochs": "2"}
    assert run.data.tags["drift.severity"] == "minor" and run.data.tags["window"] == "w1"
    assert "drift.html" in {a.path for a in c.list_artifacts(cand.run_id)}
    mv = c.get_model_version(settings.model_name, "1")
    assert mv.run_id == cand.run_id and mv.tags["window"] == "w1"
    assert registry.champion(settings) is None
    err = capfd.readouterr().err
    assert "WARNING" not in err and "INFO" not in err, err


def test_same_window_twice_gives_one_version_and_one_run(settings):
    window = "2024-01-01T00:00:00+00:00/2024-01-08T00:00:00+00:00"  # as cycle.gate writes it
    first = log(settings, window, 0.1)
    again = log(settings, window, 0.2, seed=1)
    assert again == first
    c = client(settings)
    assert len(c.search_model_versions(f"name='{settings.model_name}'")) == 1
    assert len(c.search_runs([registry.configure(settings)])) == 1


def test_missing_artifact_is_refused_before_any_run(settings, tmp_path):
    with pytest.raises(RegistryError, match="do not exist"):
        log(settings, "w1", 0.1, artifacts={"drift.html": tmp_path / "nope.html"})
    assert client(settings).search_runs([registry.configure(settings)]) == []


def test_promotions_move_champion_and_previous(settings):
    v1 = log(settings, "w1", 0.10)
    first = gate(settings, v1, 0.10, None)
    assert first.promote and aliases(settings) == {"challenger": 1, "champion": 1}
    assert registry.champion(settings) == v1

    v2 = log(settings, "w2", 0.12, seed=1)
    second = gate(settings, v2, 0.12, 0.10)
    assert second.promote and second.champion_version == 1
    expected = {"challenger": 2, "champion": 2, "previous": 1}
    assert aliases(settings) == expected

    registry.apply_decision(second, settings)  # an Airflow retry
    assert aliases(settings) == expected

    c = client(settings)
    mv = c.get_model_version(settings.model_name, "2")
    assert mv.tags["gate.promote"] == "True" and mv.tags["gate.reason"] == second.reason
    assert c.get_run(v2.run_id).data.tags["gate.champion_version"] == "1"
    path = c.download_artifacts(v2.run_id, registry.DECISION_ARTIFACT)
    assert GateDecision.from_dict(json.loads(Path(path).read_text())) == second


def test_rejected_challenger_leaves_aliases_but_records_why(settings):
    gate(settings, log(settings, "w1", 0.10), 0.10, None)
    v2 = log(settings, "w2", 0.09, seed=1)
    decision = gate(settings, v2, 0.09, 0.10)
    assert not decision.promote
    assert aliases(settings) == {"challenger": 2, "champion": 1}
    mv = client(settings).get_model_version(settings.model_name, "2")
    assert mv.tags["gate.promote"] == "False" and "0.09 <= champion 0.1" in mv.tags["gate.reason"]


def test_a_retried_cycle_cannot_overwrite_the_decision_that_promoted_it(settings):
    """After promotion, a retry sees its own challenger as champion: champion == challenger."""
    v1 = log(settings, "w1", 0.10)
    promoted = gate(settings, v1, 0.10, None)
    retry = gate(settings, log(settings, "w1", 0.10), 0.10, 0.10)
    assert retry.champion_version == retry.challenger_version == 1 and not retry.promote
    assert aliases(settings) == {"challenger": 1, "champion": 1}
    assert client(settings).get_model_version(settings.model_name, "1").tags["gate.reason"] == promoted.reason


def test_apply_decision_needs_an_existing_challenger_version(settings):
    log(settings, "w1", 0.1)
    with pytest.raises(RegistryError, match="no challenger version"):
        registry.apply_decision(registry.decide(0.1, None, settings.gate), settings)
    with pytest.raises(RegistryError, match="no version 7"):
        registry.apply_decision(registry.decide(0.1, None, settings.gate, challenger_version=7), settings)


def test_load_model_round_trips_weights(settings):
    assert registry.load_model(settings, "champion") is None  # nothing registered yet
    cand = log(settings, "w1", 0.1, seed=3)
    assert registry.load_model(settings, "champion") is None  # registered, not promoted
    gate(settings, cand, 0.1, None)
    expected = tiny_model(3)
    for ref in ("champion", "challenger", 1, "1"):
        loaded = registry.load_model(settings, ref)
        assert isinstance(loaded, nn.Linear) and not loaded.training
        assert torch.allclose(loaded.weight, expected.weight) and torch.allclose(loaded.bias, expected.bias)
    with pytest.raises(RegistryError, match="no version 9"):
        registry.load_model(settings, 9)


def test_two_tower_recommender_loads_in_a_fresh_process(settings, tmp_path):
    """The real model class pickles by reference; another process must rebuild it from `recsys_retrain`."""
    from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower

    users = pd.DataFrame(
        {"user_id": [1, 2], "user_gender": ["F", "M"], "user_age": [25, 35], "user_occupation": ["writer", "other"]}
    )
    items = pd.DataFrame(
        {"item_id": [10, 11, 12], "item_genres": ["Drama", "Comedy|War", ""], "item_release_year": [1995, 1980, 2001]}
    )
    encoder = FeatureEncoder.fit(users, items)
    torch.manual_seed(0)
    model = Recommender(build_two_tower(encoder, 4), encoder, items)
    expected = model.score(users)
    registry.log_candidate(model, settings=settings, window="w1", params={}, metrics={METRIC: 0.1})
    users_path = tmp_path / "users.json"
    users.to_json(users_path)
    script = textwrap.dedent(f"""
        import json, pandas as pd
        from recsys_retrain import registry
        from recsys_retrain.settings import Settings
        model = registry.load_model(Settings(home={str(settings.home)!r}), "challenger")
        print(json.dumps({{"type": type(model).__module__ + "." + type(model).__name__,
                          "scores": model.score(pd.read_json({str(users_path)!r})).tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "recsys_retrain.model.Recommender"
    assert torch.allclose(torch.tensor(out["scores"]), expected, atol=1e-6)


# --- alias history, compare-and-set, races -----------------------------------------------


def promote(s: Settings, cand: Candidate, champion_version: int | None, window: str = "w") -> GateDecision:
    decision = registry.decide(0.2, 0.1 if champion_version else None, s.gate,
                               challenger_version=cand.version, champion_version=champion_version)
    decision = GateDecision.from_dict({**decision.to_dict(), "window": window})
    registry.apply_decision(decision, s)
    return decision


def test_every_alias_move_is_kept_with_who_when_from_to_and_why(settings):
    v1 = log(settings, "w1", 0.1)
    promote(settings, v1, None)
    v2 = log(settings, "w2", 0.2, seed=1)
    second = promote(settings, v2, 1)
    moves = registry.history(settings)
    assert [(m.seq, m.alias, m.from_version, m.to_version) for m in moves] == [
        (1, "challenger", None, 1), (2, "champion", None, 1), (3, "challenger", 1, 2),
        (4, "previous", None, 1), (5, "champion", 1, 2),
    ]
    last = moves[-1]
    assert last.reason == second.reason and last.actor.startswith("gate (") and "pid" in last.actor
    assert moves[3].op == last.op != moves[1].op  # previous and champion moved as one operation
    assert pd.Timestamp(last.at).tzinfo is not None and v2.run_id in last.evidence
    assert registry.AliasMove.from_dict(json.loads(json.dumps(last.to_dict()))) == last
    assert settings.model_name + registry.LOCK_SUFFIX not in {
        m.name for m in client(settings).search_registered_models()
    }  # the lock is released


def test_a_promotion_measured_against_a_stale_champion_changes_nothing(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    v2, v3 = log(settings, "w2", 0.2, seed=1), log(settings, "w3", 0.2, seed=2)
    promote(settings, v2, 1)
    stale = promote(settings, v3, 1)  # measured against v1, but v2 is champion now
    assert stale.promote and aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    tags = client(settings).get_model_version(settings.model_name, "3").tags
    assert tags["gate.applied"] == "False" and "re-gate" in tags["gate.stale"]


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from recsys_retrain import registry
    from recsys_retrain.gate import GateDecision
    from recsys_retrain.settings import Settings
    home, version, sync = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    s = Settings(home=home)
    registry.configure(s)
    (sync / f"ready-{version}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    d = registry.decide(0.2, 0.1, s.gate, challenger_version=version, champion_version=1)
    print(json.dumps({"version": version, "promoted": registry.apply_decision(d, s)}))
""")


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
    moves = [m for m in registry.history(settings) if m.alias in ("champion", "previous")]
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [
        ("champion", None, 1), ("previous", None, 1), ("champion", 1, winners[0]),
    ]


# --- revert, manual promotion ------------------------------------------------------------


def test_revert_rolls_back_tags_the_version_and_is_idempotent(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    promote(settings, log(settings, "w2", 0.2, seed=1), 1)
    promote(settings, log(settings, "w3", 0.3, seed=2), 2)
    moved = registry.revert(settings, reason="worse on 2 windows", window="a/2024-02-01", expected_champion=3)
    assert {(m.alias, m.from_version, m.to_version) for m in moved} == {("champion", 3, 2), ("previous", 2, 1)}
    assert aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    tags = client(settings).get_model_version(settings.model_name, "3").tags
    assert tags["reverted"] == "true" and tags["reverted.reason"] == "worse on 2 windows"
    assert tags["reverted.window"] == "a/2024-02-01" and tags["reverted.by"].startswith("monitor (")
    assert registry.revert(settings, reason="again", expected_champion=3) == []  # a retried monitor task
    assert aliases(settings) == {"challenger": 3, "champion": 2, "previous": 1}
    assert registry.reverted_on(settings, 3) == "a/2024-02-01" and registry.reverted_on(settings, 2) is None

    with pytest.raises(RegistryError, match="reverted on window a/2024-02-01"):
        registry.promote(settings, 3, reason="operator thinks it is fine")
    same_window = registry.decide(0.4, 0.3, settings.gate, challenger_version=3, champion_version=2)
    with pytest.raises(RegistryError, match="needs a gate decision on a later window"):
        registry.apply_decision(GateDecision.from_dict({**same_window.to_dict(), "window": "a/2024-02-01"}), settings)
    assert registry.apply_decision(GateDecision.from_dict({**same_window.to_dict(), "window": "b/2024-03-01"}), settings)
    assert aliases(settings)["champion"] == 3


def test_manual_promotion_is_recorded_like_any_move(settings):
    promote(settings, log(settings, "w1", 0.1), None)
    log(settings, "w2", 0.2, seed=1)
    moved = registry.promote(settings, 2, reason="hotfix approved by ana", actor="cli promote")
    assert [(m.alias, m.to_version) for m in moved] == [("previous", 1), ("champion", 2)]
    assert registry.history(settings)[-1].reason == "hotfix approved by ana"
    assert registry.promote(settings, 2, reason="again") == []


# --- faults --------------------------------------------------------------------------------


def test_an_unreachable_tracking_server_is_retried_with_backoff_then_fails_in_one_line(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our retries, not MLflow's minutes-long ones
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    s = Settings(tracking_uri=f"http://127.0.0.1:{port}", gate={"registry_retries": 3, "registry_backoff_s": 0.1})
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="recsys_retrain.registry"), pytest.raises(RegistryError) as err:
        registry.champion(s)
    assert time.monotonic() - started >= 0.1 + 0.2  # two waits, doubling
    assert "after 3 attempts" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert "\n" not in str(err.value)
    assert [r.message.split(",")[0] for r in caplog.records] == [
        "MLflow get_experiment_by_name failed (attempt 1/3)", "MLflow get_experiment_by_name failed (attempt 2/3)",
    ]
    mlflow.set_tracking_uri(None)


def test_an_unloadable_artifact_is_rejected_by_the_gate_with_the_reason(settings):
    from recsys_retrain.gate import decide as gate_decide
    from tests.test_gate import ev

    cand = log(settings, "w1", 0.1)
    uri = client(settings).get_model_version_download_uri(settings.model_name, str(cand.version))
    weights = [p for p in Path(uri.removeprefix("file://")).rglob("*") if p.is_file() and p.suffix == ".pth"]
    assert weights, "expected the pickled model file"
    for path in weights:
        path.write_bytes(b"not a pickle")
    model, error = registry.try_load(settings, cand.version)
    assert model is None and error
    decision = gate_decide(None, ev(), settings.gate, challenger_version=cand.version, champion_version=None,
                           load_error=error)
    assert not decision.promote and "cannot be loaded" in decision.reason and error in decision.reason


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
        assert registry.champion(s).version == 2 and registry.alias(s, "previous").version == 1  # what we read
        proxy.cut_after(None)  # the server is back
        assert registry.recover(s)
        assert aliases(s) == {"challenger": 2, "champion": 2, "previous": 1}
        moves = registry.history(s)
        assert [(m.alias, m.from_version, m.to_version) for m in moves[-2:]] == [("previous", None, 1),
                                                                                ("champion", 1, 2)]
        assert not registry.recover(s)
    finally:
        proxy.server.shutdown()
