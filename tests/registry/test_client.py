"""The MLflow client: configured per call without global side effects, retried on outages."""

from __future__ import annotations

import socket
import time

import mlflow
import pytest
from mlflow import MlflowClient

from recsys_retrain.errors import RegistryError
from recsys_retrain.registry.candidates import champion
from recsys_retrain.registry.client import configure
from recsys_retrain.settings import Settings
from tests.registry.conftest import client, log


def test_configure_creates_the_experiment_once_with_the_artifact_root(settings):
    first = configure(settings)
    assert configure(settings) == first
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


def test_an_unreachable_tracking_server_is_retried_with_backoff_then_fails_in_one_line(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our retries, not MLflow's minutes-long ones
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    s = Settings(tracking_uri=f"http://127.0.0.1:{port}", gate={"registry_retries": 3, "registry_backoff_s": 0.1})
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="recsys_retrain.registry.client"), pytest.raises(RegistryError) as err:
        champion(s)
    assert time.monotonic() - started >= 0.1 + 0.2  # two waits, doubling
    assert "after 3 attempts" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert "\n" not in str(err.value)
    assert [r.message.split(",")[0] for r in caplog.records] == [
        "MLflow get_experiment_by_name failed (attempt 1/3)", "MLflow get_experiment_by_name failed (attempt 2/3)",
    ]
    mlflow.set_tracking_uri(None)
