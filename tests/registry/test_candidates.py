"""Candidates: a model logged and registered once per window, loaded back in this and another process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from recsys_retrain.errors import RegistryError
from recsys_retrain.gate import decide
from recsys_retrain.registry.candidates import Candidate, champion, load_model, log_candidate, try_load
from recsys_retrain.registry.client import configure
from tests.registry.conftest import METRIC, aliases, client, gate, log, tiny_model
from tests.test_gate import ev


def test_candidate_round_trips_through_json():
    c = Candidate(run_id="abc", version=3, model_uri="models:/two_tower/3", window="w")
    assert Candidate.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Candidate.from_dict({**c.to_dict(), "version": "3", "added_later": 1}) == c


def test_log_candidate_registers_version_1_as_challenger(settings, tmp_path, capfd):
    report = tmp_path / "report.html"
    report.write_text("<html>drift</html>")
    cand = log(settings, "w1", 0.1, artifacts={"drift.html": report}, tags={"drift.severity": "minor"})

    assert (cand.version, cand.window, cand.model_uri) == (1, "w1", f"models:/{settings.model_name}/1")
    assert aliases(settings) == {"challenger": 1}
    c = client(settings)
    run = c.get_run(cand.run_id)
    assert run.data.metrics == {METRIC: 0.1}
    served = {"feature_repo": str(settings.feature_repo.resolve()), "k": "10", "exclude_seen": "True"}  # the pyfunc's config
    assert run.data.params == {"lr": "0.1", "epochs": "2", **served}
    assert run.data.tags["drift.severity"] == "minor" and run.data.tags["window"] == "w1"
    assert "drift.html" in {a.path for a in c.list_artifacts(cand.run_id)}
    mv = c.get_model_version(settings.model_name, "1")
    assert mv.run_id == cand.run_id and mv.tags["window"] == "w1"
    assert champion(settings) is None
    err = capfd.readouterr().err
    assert "WARNING" not in err and "INFO" not in err, err


def test_same_window_twice_gives_one_version_and_one_run(settings):
    window = "2024-01-01T00:00:00+00:00/2024-01-08T00:00:00+00:00"  # as cycle.gate writes it
    first = log(settings, window, 0.1)
    again = log(settings, window, 0.2, seed=1)
    assert again == first
    c = client(settings)
    assert len(c.search_model_versions(f"name='{settings.model_name}'")) == 1
    assert len(c.search_runs([configure(settings)])) == 1


def test_missing_artifact_is_refused_before_any_run(settings, tmp_path):
    with pytest.raises(RegistryError, match="do not exist"):
        log(settings, "w1", 0.1, artifacts={"drift.html": tmp_path / "nope.html"})
    assert client(settings).search_runs([configure(settings)]) == []


def test_load_model_round_trips_weights(settings):
    assert load_model(settings, "champion") is None  # nothing registered yet
    cand = log(settings, "w1", 0.1, seed=3)
    assert load_model(settings, "champion") is None  # registered, not promoted
    gate(settings, cand, 0.1, None)
    expected = tiny_model(3)
    for ref in ("champion", "challenger", 1, "1"):
        loaded = load_model(settings, ref)
        assert isinstance(loaded, nn.Linear) and not loaded.training
        assert torch.allclose(loaded.weight, expected.weight) and torch.allclose(loaded.bias, expected.bias)
    with pytest.raises(RegistryError, match="no version 9"):
        load_model(settings, 9)


@pytest.mark.slow
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
    log_candidate(model, settings=settings, window="w1", params={}, metrics={METRIC: 0.1})
    users_path = tmp_path / "users.json"
    users.to_json(users_path)
    script = textwrap.dedent(f"""
        import json, pandas as pd
        from recsys_retrain.registry.candidates import load_model
        from recsys_retrain.settings import Settings
        model = load_model(Settings(home={str(settings.home)!r}), "challenger")
        print(json.dumps({{"type": type(model).__module__ + "." + type(model).__name__,
                          "scores": model.score(pd.read_json({str(users_path)!r})).tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "recsys_retrain.model.Recommender"
    assert torch.allclose(torch.tensor(out["scores"]), expected, atol=1e-6)


def test_an_unloadable_artifact_is_rejected_by_the_gate_with_the_reason(settings):
    cand = log(settings, "w1", 0.1)
    uri = client(settings).get_model_version_download_uri(settings.model_name, str(cand.version))
    weights = [p for p in Path(uri.removeprefix("file://")).rglob("*") if p.is_file() and p.suffix == ".pth"]
    assert weights, "expected the pickled model file"
    for path in weights:
        path.write_bytes(b"not a pickle")
    model, error = try_load(settings, cand.version)
    assert model is None and error
    decision = decide(None, ev(), settings.gate, challenger_version=cand.version, champion_version=None,
                      load_error=error)
    assert not decision.promote and "cannot be loaded" in decision.reason and error in decision.reason
