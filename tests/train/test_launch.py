"""The torchrun launcher: two CPU processes (gloo) through the train task's path, and its failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_retrain import cycle
from recsys_retrain.errors import PipelineError
from recsys_retrain.evaluate import evaluate
from recsys_retrain.settings import Settings
from recsys_retrain.train import launch
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import TrainResult
from tests.train.worlds import synthetic_world

TINY = {"epochs": 3, "embedding_dim": 8, "batch_size": 32}


def cycle_folder(root: Path) -> dict:
    """A cycle folder as the pull step leaves it (history + catalogue), and the pulled dict pointing at it."""
    history, catalogue = synthetic_world()
    root.mkdir(parents=True)
    history.to_parquet(root / "history.parquet")
    catalogue.to_parquet(root / "catalogue.parquet")
    return {"run_dir": str(root)}


@pytest.mark.slow  # two torchrun runs: about 10 s
def test_two_processes_through_the_train_task(tmp_path):
    """The DAG's train step with ``train.processes=2``: torchrun, two gloo processes, one model."""
    static = {"policy": "static"}
    one = cycle.train(cycle_folder(tmp_path / "run1"), Settings(home=tmp_path / "h1", train=TINY, schedule=static))
    settings = Settings(home=tmp_path / "h2", train={**TINY, "processes": 2}, schedule=static)
    two = cycle.train(cycle_folder(tmp_path / "run2"), settings)

    model_dir = tmp_path / "run2" / "model"
    assert json.loads((model_dir / "train_settings.json").read_text()) == settings.train.model_dump(mode="json")
    rank0 = json.loads((model_dir / "train_result.json").read_text())  # rank 0's result, through the launcher
    assert {k: v for k, v in two.items() if k != "data_start"} == rank0  # the cycle adds the span it trained on
    assert Path(two["checkpoint"]) == model_dir / "model.pt" and not list((model_dir / "checkpoints").glob("*.pt"))
    assert len(two["epoch_losses"]) == 3 and two["epoch_losses"][-1] < two["epoch_losses"][0]
    assert two["n_samples"] == one["n_samples"]
    assert two["n_steps"] <= one["n_steps"] // 2 + 3  # each rank ran half of the batches
    assert two["epoch_losses"][-1] == pytest.approx(one["epoch_losses"][-1], rel=0.25)

    history, _ = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    ndcg = {n: evaluate(load_checkpoint(Path(r["checkpoint"])), history, holdout, k=5).ndcg for n, r in (("one", one), ("two", two))}
    assert ndcg["two"] > 0.1  # a random ranking scores about 0.08 on this world
    assert ndcg["two"] == pytest.approx(ndcg["one"], abs=0.1)


def test_a_failing_run_is_one_line_naming_the_exit_code_and_the_workers_error(tmp_path):
    history, catalogue = synthetic_world()
    history.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    catalogue.to_parquet(tmp_path / "catalogue.parquet")
    out = tmp_path / "out"
    out.mkdir()
    stale = TrainResult("old.pt", 1, 1, (1.0,), 1.0)  # an earlier attempt's result must not pass for this one
    (out / "train_result.json").write_text(json.dumps(stale.to_dict()))
    settings = Settings(home=tmp_path / "home", train={**TINY, "processes": 2})
    with pytest.raises(PipelineError) as err:
        launch.train_distributed(tmp_path / "empty.parquet", tmp_path / "catalogue.parquet", out, settings)
    message = str(err.value)
    assert "\n" not in message
    assert "exited with code 1" in message and "2 processes" in message
    assert "DataError: training window is empty" in message
    assert not (out / "train_result.json").exists()


@pytest.mark.parametrize(
    "lines,expected",
    [
        (["[rank1]: Traceback", "[rank1]: ValueError: bad value", "ChildFailedError:"], "ValueError: bad value"),
        (["some output", "exitcode  : -9 (pid: 12)"], "exitcode  : -9 (pid: 12)"),
        ([], "no output"),
    ],
)
def test_last_error(lines, expected):
    assert launch.last_error(lines) == expected
