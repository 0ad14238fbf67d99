"""Fault: the champion's artifact cannot be read while a challenger is judged.

A flaky artifact store is retried, and the challenger is then judged against the
champion as usual. A champion whose artifact is truly broken is replaced, for the
comparison only, by the ``previous`` version. With neither loadable the champion stays
and the cycle fails in one line: no challenger ever passes on the floor alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_retrain import cycle
from recsys_retrain.errors import RegistryError
from recsys_retrain.registry.candidates import log_candidate
from recsys_retrain.registry.promotion import promote
from recsys_retrain.train.checkpoints import load_checkpoint
from tests.faults.conftest import aliases, copy_cycle, report, tiny_settings, versions

NO_DRIFT = {"severity": "none", "html": None, "json": None}
EARLIER = ("1997-09-22T00:00:00+00:00/1997-09-29T00:00:00+00:00", "1997-09-29T00:00:00+00:00/1997-10-06T00:00:00+00:00")


@pytest.fixture
def world(pulled_template, tmp_path):
    """A trained challenger, and two earlier versions promoted in turn (champion v2, previous v1)."""
    settings = tiny_settings(tmp_path / "home", tmp_path / "features", train={"epochs": 1, "embedding_dim": 8},
                             gate={"registry_retries": 3, "registry_backoff_s": 0.05})
    pulled = copy_cycle(pulled_template, tmp_path / "run")
    trained = cycle.train(pulled, settings)
    for window in EARLIER:
        version = log_candidate(load_checkpoint(trained["checkpoint"]), settings=settings, window=window, params={},
                                metrics={}).version
        promote(settings, version, reason="serving before this window")
    assert aliases(settings) == {"champion": 2, "previous": 1, "challenger": 2}
    return settings, pulled, trained


def break_artifact(settings, version: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    uri = client.get_model_version_download_uri(settings.model_name, str(version))
    weights = [p for p in Path(uri.removeprefix("file://")).rglob("*") if p.is_file() and p.suffix == ".pth"]
    assert weights
    for path in weights:
        path.write_bytes(b"not a pickle")


@pytest.mark.slow
def test_a_flaky_artifact_store_is_retried_and_the_champion_is_judged(world, monkeypatch, record_property):
    from recsys_retrain.registry import candidates

    settings, pulled, trained = world
    real, calls = candidates.read_model, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 != 0:  # two of every three reads fail as a dropped connection would
            raise ConnectionResetError("artifact store: connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(candidates, "read_model", flaky)
    evaluated = cycle.evaluate(pulled, trained, settings)
    assert calls["n"] >= 3  # the reads did fail and were retried
    assert evaluated["champion_version"] == 2 and evaluated["champion"] is not None
    assert evaluated["champion_error"] is None
    summary = cycle.gate(pulled, NO_DRIFT, trained, evaluated, settings)
    assert summary["champion_ndcg"] is not None and "cannot be loaded" not in summary["reason"]
    report(record_property, data_lost_rows=0, bad_promotions=0)


@pytest.mark.slow
def test_a_broken_champion_is_replaced_by_previous_for_the_comparison(world, record_property):
    settings, pulled, trained = world
    break_artifact(settings, 2)
    evaluated = cycle.evaluate(pulled, trained, settings)
    assert evaluated["champion_version"] == 1 and evaluated["champion"] is not None
    assert evaluated["champion_error"].startswith("champion v2 cannot be loaded (")
    summary = cycle.gate(pulled, NO_DRIFT, trained, evaluated, settings)
    assert summary["champion_ndcg"] is not None
    assert summary["reason"].startswith("champion v2 cannot be loaded (") and "judged against v1" in summary["reason"]
    report(record_property, data_lost_rows=0, bad_promotions=0)


@pytest.mark.slow
def test_with_nothing_loadable_the_champion_stays_and_the_cycle_fails_in_one_line(world, record_property):
    settings, pulled, trained = world
    break_artifact(settings, 2)
    break_artifact(settings, 1)
    before = (aliases(settings), versions(settings))
    with pytest.raises(RegistryError) as err:
        cycle.evaluate(pulled, trained, settings)
    message = str(err.value)
    assert "\n" not in message and message.startswith("champion v2 cannot be loaded (")
    assert "previous v1 neither" in message and "the champion stays" in message
    assert (aliases(settings), versions(settings)) == before
    report(record_property, data_lost_rows=0, bad_promotions=0)
