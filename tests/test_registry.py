"""Registry: the pure gate rule on numbers, then real MLflow on SQLite in tmp_path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from pipeline import registry
from pipeline.errors import RegistryError
from pipeline.registry import Candidate, GateDecision
from pipeline.settings import GateSettings, Settings

METRIC = "ndcg_at_10"
NAN, INF = math.nan, math.inf


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh store per test; the tracking URI configure() sets (and exports) is undone after it."""
    s = Settings(home=tmp_path / "home")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    yield s
    mlflow.set_tracking_uri(None)


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
    """The real model class pickles by reference; another process must rebuild it from `pipeline`."""
    from pipeline.model import FeatureEncoder, Recommender, build_two_tower

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
        from pipeline import registry
        from pipeline.settings import Settings
        model = registry.load_model(Settings(home={str(settings.home)!r}), "challenger")
        print(json.dumps({{"type": type(model).__module__ + "." + type(model).__name__,
                          "scores": model.score(pd.read_json({str(users_path)!r})).tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "pipeline.model.Recommender"
    assert torch.allclose(torch.tensor(out["scores"]), expected, atol=1e-6)
