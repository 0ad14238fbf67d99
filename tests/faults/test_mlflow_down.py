"""Fault: the MLflow tracking server (on PostgreSQL) goes down during the gate.

The gate retries with backoff, then fails in one line; the registry, once the server
is back, holds exactly what it held before (aliases, versions), and the task's retry
makes the one decision.
"""

from __future__ import annotations

import time
import uuid

import pytest

from recsys_retrain import cycle
from recsys_retrain.errors import RegistryError
from recsys_retrain.registry.aliases import history
from recsys_retrain.registry.candidates import log_candidate
from recsys_retrain.registry.promotion import promote
from recsys_retrain.train.checkpoints import load_checkpoint
from tests.faults.conftest import aliases, copy_cycle, report, tiny_settings, versions

NO_DRIFT = {"severity": "none", "html": None, "json": None}
EARLIER = "1997-09-29T00:00:00+00:00/1997-10-06T00:00:00+00:00"  # the champion's window, before this one


@pytest.fixture
def server(tmp_path, monkeypatch):
    pytest.importorskip("psycopg", reason="the prod extra (psycopg) is part of make setup")
    from infra.stack import MlflowServer, Servers, Stack, free_port

    servers = Servers()
    servers.ensure()
    stack = Stack(prefix=f"fault_{uuid.uuid4().hex[:8]}", home=tmp_path / "stack", mlflow_port=free_port())
    stack.create_databases()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the pipeline's retries, not MLflow's minutes-long ones
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    srv = MlflowServer(stack).start()
    try:
        yield srv
    finally:
        srv.stop()
        stack.drop()


@pytest.mark.slow
def test_mlflow_down_during_the_gate_retries_then_fails_cleanly_with_aliases_unchanged(
    server, pulled_template, tmp_path, record_property
):
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", tracking_uri=server.stack.tracking_uri,
                             train={"epochs": 1, "embedding_dim": 8},
                             gate={"registry_retries": 3, "registry_backoff_s": 0.2})
    pulled = copy_cycle(pulled_template, tmp_path / "run")
    trained = cycle.train(pulled, settings)
    champion = log_candidate(load_checkpoint(trained["checkpoint"]), settings=settings, window=EARLIER,
                             params={}, metrics={})
    promote(settings, champion.version, reason="the serving model before this window")
    evaluated = cycle.evaluate(pulled, trained, settings)
    assert evaluated["champion_version"] == 1 and evaluated["champion"] is not None
    before = (aliases(settings), versions(settings), len(history(settings)))

    server.stop()  # the tracking server goes down between evaluate and gate
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        cycle.gate(pulled, NO_DRIFT, trained, evaluated, settings)
    assert time.monotonic() - started >= 0.2 + 0.4  # two waits, doubling
    assert "after 3 attempts" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "summary.json").exists()  # no decision recorded

    server.start()  # back, on the same PostgreSQL database
    after = (aliases(settings), versions(settings), len(history(settings)))
    assert after == before == ({"challenger": 1, "champion": 1}, [1], before[2])

    summary = cycle.gate(pulled, NO_DRIFT, trained, evaluated, settings)  # the task's retry
    served = summary["served_version"]  # after a promotion: the challenger's refit (train.refit), or itself
    assert summary["version"] == 2 and versions(settings) == sorted({1, 2, served or 2})
    champion_now = aliases(settings)["champion"]
    assert champion_now == (served if summary["promoted"] else 1)
    bad = int(champion_now != 1 and not summary["promoted"]) + int(after != before)
    report(record_property, data_lost_rows=0, bad_promotions=bad)
