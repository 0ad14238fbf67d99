"""recsys_retrain.serve.pyfunc: every candidate is a pyfunc that serves top-K in a fresh process and over REST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from recsys_retrain.registry import candidates, promotion
from recsys_retrain.serve.recommend import served_model
from recsys_retrain.settings import Settings

USERS = [1, 13, 405, 10**9]  # three known users and one the store never saw


@pytest.fixture(scope="module")
def registry(served_repo, recommender, tmp_path_factory) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("home"), feature_repo=served_repo)
    version = candidates.log_candidate(recommender, settings=settings, window="1997-12-29/1998-01-05", params={},
                                       metrics={}).version
    promotion.promote(settings, version, reason="test", actor="test")
    return settings


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_uri, "RETRAIN_FEATURE_REPO": str(settings.feature_repo),
            # mlflow models serve execs uvicorn by name: the environment's bin folder must be on PATH (an activated venv)
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def in_process(settings: Settings, users=USERS, k: int = 10) -> list[dict]:
    _, model = served_model(settings)
    return model.predict(None, pd.DataFrame({"user_id": users, "k": k})).to_dict("records")


def test_a_version_carries_signature_example_requirements_and_code(registry):
    from mlflow import MlflowClient

    uri = MlflowClient(registry.mlflow_uri, registry.mlflow_uri).get_model_version_download_uri(registry.model_name, "1")
    folder = Path(uri.removeprefix("file://"))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c.get("required", True)) for c in inputs] == [
        ("user_id", "long", True), ("k", "long", False), ("exclude_seen", "boolean", False)]
    assert {c["name"] for c in json.loads(mlmodel["signature"]["outputs"])} == {"user_id", "item_ids", "scores", "source"}
    assert (folder / mlmodel["saved_input_example_info"]["artifact_path"]).exists()
    pinned = {line.split("==")[0] for line in (folder / "requirements.txt").read_text().split()}
    assert {"torch", "torchrec", "feast", "mlflow", "pandas"} <= pinned
    assert (folder / "code" / "recsys_retrain" / "serve" / "pyfunc.py").exists()


@pytest.mark.slow
def test_the_champion_loads_and_answers_in_a_fresh_process(registry):
    script = ("import sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model('models:/two_tower@champion')\n"
              f"print(m.predict(pd.DataFrame({{'user_id': {USERS}, 'k': 10}})).to_json(orient='records'))\n")
    done = subprocess.run([sys.executable, "-c", script], env=env_for(registry), capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    expected = in_process(registry)
    assert [r["item_ids"] for r in answer] == [r["item_ids"] for r in expected]
    assert [r["source"] for r in answer] == ["model", "model", "model", "recent_popularity"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310  # a local test server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def rest(registry):
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "models", "serve", "-m", "models:/two_tower@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env_for(registry), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):  # nosec B310
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {server.stderr.read()[-3000:]}")
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("mlflow models serve did not answer /ping within 180 s")
    yield port
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_rest_answers_what_the_in_process_model_answers(registry, rest):
    status, body = post(rest, {"dataframe_split": {"columns": ["user_id", "k"], "data": [[u, 10] for u in USERS]}})
    assert status == 200, body
    expected = in_process(registry)
    assert [r["item_ids"] for r in body["predictions"]] == [r["item_ids"] for r in expected]
    got = [s for r in body["predictions"] for s in r["scores"]]
    assert got == pytest.approx([s for r in expected for s in r["scores"]], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("payload,field", [
    ({"dataframe_split": {"columns": ["uid"], "data": [[1]]}}, "user_id"),
    ({"dataframe_records": [{"user_id": "someone"}]}, "user_id"),
    ({"dataframe_records": [{"user_id": 1, "k": 0}]}, "k"),
])
def test_a_malformed_request_gets_400_naming_the_field(rest, payload, field):
    status, body = post(rest, payload)
    assert status == 400, body
    assert field in body.get("message", ""), body


@pytest.mark.slow
def test_retrain_recommend_prints_the_champions_items_with_titles(registry):
    from tests.conftest import cache_dir

    cache = registry.home / "cache"
    if not cache.exists():
        cache.symlink_to(cache_dir(), target_is_directory=True)  # the MovieLens wheel: titles without a download
    retrain = Path(sys.executable).with_name("retrain")
    env = {**env_for(registry), "RETRAIN_HOME": str(registry.home), "COLUMNS": "200"}
    done = subprocess.run([str(retrain), "recommend", "--user", "1", "--user", "1000000000", "--k", "5"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = in_process(registry, users=[1, 10**9], k=5)
    lines = [line for line in done.stdout.splitlines() if "│" in line]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines]
    items = [[int(r[2]) for r in rows if r[0] == str(u)] for u in (1, 10**9)]
    assert items == [r["item_ids"] for r in expected]
    assert all(r[3] for r in rows)  # every MovieLens item has its title
    assert {r[5] for r in rows if r[0] == str(10**9)} == {"recent_popularity"}
    missing = subprocess.run([str(retrain), "recommend", "--user", "1", "--alias", "previous"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "alias 'previous': no version" in missing.stderr, missing.stderr[-2000:]
