"""End to end: the CLI runs the real DAG (Airflow dag.test) over two weekly windows.

Real Feast, Evidently, TorchRec, MLflow and Airflow, on a slice of MovieLens-100K
written as GroupLens files, in a fresh process as a user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RETRAIN = Path(sys.executable).with_name("retrain")


def write_grouplens(raw, folder: Path, end: str) -> None:
    """The slice before ``end`` as u.data / u.user / u.item files."""
    folder.mkdir()
    inter = raw.interactions[raw.interactions["timestamp"] < pd.Timestamp(end, tz="UTC")]
    out = inter.assign(ts=inter["timestamp"].astype("int64") // 10**9)[["user_id", "item_id", "rating", "ts"]]
    out.astype({"rating": int}).to_csv(folder / "u.data", sep="\t", header=False, index=False)
    users = raw.users.assign(zip="00000")[["user_id", "age", "gender", "occupation", "zip"]]
    users.to_csv(folder / "u.user", sep="|", header=False, index=False)
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
              "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
              "War", "Western"]
    lines = []
    for row in raw.items.itertuples():
        flags = ["1" if g in row.genres.split("|") else "0" for g in genres]
        date = f"01-Jan-{row.release_year}" if row.release_year else ""
        lines.append("|".join([str(row.item_id), f"Movie {row.item_id}", date, "", "", *flags]))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")


def run_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(RETRAIN), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sandbox(tmp_path, movielens):
    """A private pipeline home and Feast repository, so the test never touches the source tree."""
    repo = tmp_path / "features"
    shutil.copytree(ROOT / "features", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    write_grouplens(movielens, tmp_path / "ml-slice", end="1997-11-24")
    env = {
        **os.environ,
        "RETRAIN_HOME": str(tmp_path / "home"),
        "RETRAIN_FEATURE_REPO": str(repo),
        "RETRAIN_TRAIN__EPOCHS": "2",
    }
    return tmp_path, env


@pytest.mark.slow
def test_demo_runs_two_cycles_and_leaves_a_champion(sandbox):
    tmp_path, env = sandbox
    done = run_cli(["demo", "--weeks", "2", "--every", "1", "--start", "1997-11-10", "--source", str(tmp_path / "ml-slice")], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Timeline replay" in done.stdout and "report.html" in done.stdout

    runs = sorted((tmp_path / "home" / "runs").iterdir())
    assert [r.name for r in runs] == ["19971110-19971117", "19971117-19971124"]
    first, second = (json.loads((r / "summary.json").read_text()) for r in runs)
    assert first["promoted"] and first["champion_ndcg"] is None and first["version"] == 1
    served = first["served_version"]  # v2, its refit through the week, unless the refit failed its check (then v1)
    assert served == (1 if first["refit"].get("refit_version") is None else 2)
    assert second["version"] == served + 1 and second["champion_ndcg"] is not None
    if second["promoted"]:  # the gate promotes only a challenger at least min_delta better on the same users
        assert second["challenger_ndcg"] > second["champion_ndcg"]
    else:
        assert second["reason"]
    for summary, run in ((first, runs[0]), (second, runs[1])):
        assert 0.0 < summary["challenger_ndcg"] <= 1.0
        assert summary["drift"] in {"none", "minor", "major"}
        assert (run / "drift" / "drift.html").exists() and (run / "model" / "model.pt").exists()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("two_tower", "champion")
    assert int(champion.version) == (second["served_version"] if second["promoted"] else served)

    # Re-running the same window registers nothing new: one version per window.
    again = run_cli(["demo", "--no-fresh", "--weeks", "1", "--start", "1997-11-17", "--source", str(tmp_path / "ml-slice")], env)
    assert again.returncode == 0, again.stderr[-3000:]
    newest = second["served_version"] if second["promoted"] else second["version"]
    assert len(client.search_model_versions("name='two_tower'")) == newest


def test_a_missing_source_fails_with_one_line_and_writes_nothing(sandbox):
    tmp_path, env = sandbox
    done = run_cli(["demo", "--source", str(tmp_path / "nope.csv")], env, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.csv" in lines[0], done.stderr
    assert not (tmp_path / "features" / "data").exists() or not any((tmp_path / "features" / "data").iterdir())
    assert not (tmp_path / "home" / "mlflow.db").exists()


def test_a_file_without_required_columns_is_named_in_the_error(sandbox):
    tmp_path, env = sandbox
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,timestamp\n1,880000000\n")
    done = run_cli(["demo", "--source", str(bad)], env, timeout=120)
    assert done.returncode == 2
    assert "events.csv" in done.stderr and "item_id" in done.stderr
