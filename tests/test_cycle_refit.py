"""The promote path serves what is fresh: refit through the window's end, its sanity check, lineage; and warm starts.

Real Feast, TorchRec and MLflow on MovieLens-100K before 1997-11-03, one epoch of a
tiny model per training. Each scenario has its own home (an empty registry); each
window is pulled once and its cycle folder copied into the scenario's runs folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from recsys_retrain import cycle
from recsys_retrain.champion import champion_info, judged_in_place
from recsys_retrain.data.ingest import bootstrap_feature_repo
from recsys_retrain.data.load import RawData
from recsys_retrain.errors import PipelineError
from recsys_retrain.registry import candidates
from recsys_retrain.registry.aliases import history as alias_history
from recsys_retrain.settings import Settings
from tests.conftest import copy_feature_repo

END = "1997-11-03"
W = ("1997-10-27T00:00:00+00:00", "1997-11-03T00:00:00+00:00")
BEFORE = ("1997-10-20T00:00:00+00:00", "1997-10-27T00:00:00+00:00")
NO_DRIFT = {"severity": "none", "drifted_share": 0.0, "html": None, "json": None}
TINY = {"epochs": 1, "embedding_dim": 8, "batch_size": 256}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, movielens) -> Path:
    root = tmp_path_factory.mktemp("refit-world")
    inter = movielens.interactions[movielens.interactions["timestamp"] < pd.Timestamp(END, tz="UTC")]
    bootstrap_feature_repo(RawData(inter, movielens.users, movielens.items), copy_feature_repo(root / "features"))
    yield root / "features"
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def pulled_once(repo, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """W and the week before it, pulled and validated once in a template home."""
    s = settings_in(tmp_path_factory.mktemp("template") / "home", repo)
    return {w: cycle.validate(cycle.pull(*w, settings=s), settings=s) for w in (W, BEFORE)}


def pull(s: Settings, pulled_once: dict, window: tuple[str, str]) -> dict:
    """``window``'s cycle folder copied into ``s``'s runs folder, as cycle.pull and cycle.validate would write it."""
    template = pulled_once[window]
    dest = s.runs_dir / Path(template["run_dir"]).name
    shutil.copytree(template["run_dir"], dest)
    return {**template, "run_dir": str(dest), "profile": str(dest / "profile.json")}


def settings_in(home: Path, repo: Path, **sections) -> Settings:
    base = {"train": TINY, "schedule": {"policy": "static"}, "drift": {"permutations": 50}}
    return Settings(home=home, feature_repo=repo, **{**base, **sections})


def through_judge(s: Settings, pulled: dict) -> tuple[dict, dict, dict]:
    """train -> evaluate -> judge on a pulled window: the cycle up to the branch."""
    trained = cycle.train(pulled, settings=s)
    evaluated = cycle.evaluate(pulled, trained, settings=s)
    return pulled, trained, cycle.judge(pulled, NO_DRIFT, trained, evaluated, settings=s)


def tags(s: Settings, version: int) -> dict[str, str]:
    return MlflowClient(s.mlflow_uri).get_model_version(s.model_name, str(version)).tags


def versions(s: Settings) -> list[int]:
    return sorted(int(v.version) for v in MlflowClient(s.mlflow_uri).search_model_versions(f"name='{s.model_name}'"))


@pytest.fixture(scope="module")
def promoted(repo, pulled_once, tmp_path_factory):
    """One cycle on W, judge -> refit -> promote (warm refit, the default): the first model of an empty registry."""
    s = settings_in(tmp_path_factory.mktemp("promoted") / "home", repo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
        pulled, trained, judged = through_judge(s, pull(s, pulled_once, W))
        evaluated = json.loads((Path(pulled["run_dir"]) / "per_user_metrics.json").read_text())
        assert evaluated["champion"] is None
        summary = cycle.promote(judged, cycle.refit(pulled, trained, judged, settings=s), settings=s)
        assert cycle.decided(judged) == summary
        yield s, pulled, trained, judged, summary


def test_a_promotion_serves_the_refit_which_has_seen_the_window(promoted):
    s, pulled, _, judged, summary = promoted
    gated, served = summary["version"], summary["served_version"]
    assert summary["promoted"] and gated == judged["version"] and served != gated
    assert summary["refit"]["mode"] == "warm" and summary["refit"]["ok"] and summary["refit"]["refit_version"] == served
    assert "in-sample" in summary["refit"]["reason"]
    champion = candidates.champion(s)
    assert champion.version == served and champion.refit_of == gated and champion.data_end == W[1]
    assert candidates.alias(s, "challenger").version == gated  # the refit was not judged: challenger stays
    refit_tags, gated_tags = tags(s, served), tags(s, gated)
    assert (refit_tags["refit_of"], refit_tags["refit"], refit_tags["data_end"]) == (str(gated), "warm", W[1])
    assert refit_tags["data_start"] == gated_tags["data_start"] < W[0]  # a warm refit has also seen what it came from
    assert (gated_tags["data_end"], gated_tags["refit.version"]) == (W[0], str(served))
    move = [m for m in alias_history(s) if m.alias == "champion"][-1]
    assert (move.from_version, move.to_version) == (None, served) and f"the refit of v{gated}" in move.reason
    refit_json = json.loads((Path(pulled["run_dir"]) / "refit.json").read_text())["result"]
    assert refit_json["served_version"] == served and Path(refit_json["checkpoint"]).parent.name == "refit"


def test_the_refit_champion_is_refused_on_its_own_span_and_judged_after_it(promoted):
    s, pulled, _, judged, summary = promoted
    current, model = candidates.comparator(s)[:2]
    later = {"start": W[1], "end": "1997-11-10T00:00:00+00:00"}
    assert judged_in_place(s, current, model, later)[0] == current  # W+1: it has not seen it
    with pytest.raises(PipelineError, match=f"champion v{current.version} was trained on data up to 1997-11-03"):
        judged_in_place(s, current, model, {"start": BEFORE[0], "end": BEFORE[1]})
    stand_in, _ = judged_in_place(s, current, model, {"start": W[0], "end": W[1]})
    assert stand_in.version == summary["version"]  # a re-run of W: its gated version stands in for its own refit


def test_a_rerun_of_the_promoted_window_registers_and_moves_nothing(promoted, monkeypatch):
    s, pulled, trained, _, first = promoted
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    before = versions(s)
    again = cycle.train(pulled, settings=s)
    summary = cycle.gate(pulled, NO_DRIFT, again, cycle.evaluate(pulled, again, settings=s), settings=s)
    assert not summary["promoted"] and summary["version"] == first["version"] and summary["served_version"] is None
    assert versions(s) == before and candidates.champion(s).version == first["served_version"]


def nan_refit(gated_checkpoint: Path, out: Path):
    """A stand-in for refit_model whose model has a NaN weight (save_checkpoint would refuse to write one)."""
    from recsys_retrain.train.refit import RefitResult

    state = torch.load(gated_checkpoint, weights_only=True)
    name = next(k for k in state["model"] if k.endswith("t_item_id.weight"))
    state["model"][name][1, 0] = math.nan
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "model.pt")
    return RefitResult(str(out / "model.pt"), 2, 0.1, "warm", W[1])


def test_a_refit_that_breaks_never_serves_nor_blocks_the_promotion(repo, pulled_once, tmp_path, monkeypatch):
    s = settings_in(tmp_path / "home", repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    pulled, trained, judged = through_judge(s, pull(s, pulled_once, W))

    def raising(*args, **kwargs):
        raise PipelineError("refusing to save model.pt: the trained model has non-finite weights")

    monkeypatch.setattr("recsys_retrain.train.refit.refit_model", raising)
    refitted = cycle.refit(pulled, trained, judged, settings=s)
    assert not refitted["ok"] and "the refit failed (PipelineError: refusing to save" in refitted["reason"]
    assert refitted["served_version"] == judged["version"]

    (Path(pulled["run_dir"]) / "refit.json").unlink()  # the same step again, now with a NaN in the refit's weights
    monkeypatch.setattr("recsys_retrain.train.refit.refit_model",
                        lambda *a, **k: nan_refit(Path(trained["checkpoint"]), tmp_path / "nan"))
    refitted = cycle.refit(pulled, trained, judged, settings=s)
    assert not refitted["ok"] and "non-finite" in refitted["reason"]
    assert refitted["served_version"] == judged["version"] and refitted["refit_version"] is None
    json.dumps(refitted, allow_nan=False)  # what Airflow's XCom accepts
    summary = cycle.promote(judged, refitted, settings=s)
    assert summary["promoted"] and summary["served_version"] == judged["version"] and not summary["refit"]["ok"]
    assert versions(s) == [judged["version"]] and candidates.champion(s).version == judged["version"]
    assert "non-finite" in tags(s, judged["version"])["refit.fallback"]


def test_refit_off_promotes_the_gated_challenger_as_before(repo, pulled_once, tmp_path, monkeypatch):
    s = settings_in(tmp_path / "home", repo, train={**TINY, "refit": "off"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    pulled, trained, judged = through_judge(s, pull(s, pulled_once, W))
    summary = cycle.promote(judged, cycle.refit(pulled, trained, judged, settings=s), settings=s)
    assert summary["promoted"] and summary["served_version"] == summary["version"] == judged["version"]
    assert summary["refit"]["mode"] == "off" and versions(s) == [judged["version"]]
    assert candidates.champion(s).version == judged["version"] and not (Path(pulled["run_dir"]) / "refit").exists()
    with pytest.raises(PipelineError, match="the refit runs on the promote path only"):
        cycle.refit(pulled, trained, {**judged, "promote": False}, settings=s)


def test_calibrate_chooses_a_warm_start_from_the_champion_and_train_continues_from_it(
    repo, pulled_once, tmp_path, monkeypatch
):
    s = settings_in(tmp_path / "home", repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    first = cycle.gate(*gate_args(s, pull(s, pulled_once, BEFORE)), settings=s)  # the champion: BEFORE's refit
    champion = candidates.champion(s)
    assert champion.version == first["served_version"] and champion.data_end == BEFORE[1]

    warm = {"schedule": {"policy": "adaptive", "warm_start": True, "knowledge_base": False}}
    pulled = pull(s, pulled_once, W)
    plan = cycle.calibrate(pulled, NO_DRIFT, settings=s, overrides=warm)
    assert plan["plan"]["warm_start"] and plan["champion"]["version"] == str(champion.version)
    assert plan["champion"]["days_unseen"] == 0.0  # the refit has seen every day before this window
    assert "continue from the champion" in next(r["why"] for r in plan["plan"]["reasons"] if r["field"] == "warm_start")

    import recsys_retrain.train.loop as loop

    seen, real = {}, loop.train
    monkeypatch.setattr(loop, "train", lambda history, *a, **k: seen.update(history=history, **k) or real(history, *a, **k))
    trained = cycle.train(pulled, settings=s, overrides=warm, plan=plan)
    assert trained["warm_from"] == champion.version and seen["init"] is not None
    served = candidates.load_model(s, champion.version)
    assert seen["init"].encoder == served.encoder  # the registered champion itself
    days = plan["plan"]["history_days"]
    if days is not None:  # trains on its span; the history before it still feeds the features
        since = pd.Timestamp(W[0]) - pd.Timedelta(days=days)
        assert seen["train_from"] == since and seen["history"]["timestamp"].min() < since
        assert trained["data_start"] == max(since, seen["history"]["timestamp"].min()).isoformat()
    else:
        assert seen["train_from"] is None
        assert trained["data_start"] == seen["history"]["timestamp"].min().isoformat()

    scratch = cycle.calibrate(pulled, NO_DRIFT, settings=s, overrides={**warm, "schedule": {**warm["schedule"],
                                                                                          "warm_start": False}})
    assert not scratch["plan"]["warm_start"] and scratch["champion"] is None


def gate_args(s: Settings, pulled: dict) -> tuple[dict, dict, dict, dict]:
    """The arguments of cycle.gate for a pulled window: pulled, drift, trained, evaluated."""
    trained = cycle.train(pulled, settings=s)
    return pulled, NO_DRIFT, trained, cycle.evaluate(pulled, trained, settings=s)


def test_a_champion_that_has_seen_the_window_is_no_warm_start(promoted, pulled_once, monkeypatch):
    """A warm start from a model trained on the window it is judged on would leak it: calibrate leaves it out."""
    s = promoted[0]  # the champion is W's refit: it has seen W
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    pulled = pulled_once[BEFORE]
    fit = pd.read_parquet(Path(pulled["run_dir"]) / "history.parquet")
    catalogue = pd.read_parquet(Path(pulled["run_dir"]) / "catalogue.parquet")
    assert champion_info(s, fit, catalogue, BEFORE[0]) is None
    assert champion_info(s, fit, catalogue, W[1]).days_unseen == 0.0  # the next window may start from it
