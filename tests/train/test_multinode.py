"""Two torchrun nodes meeting at a c10d rendezvous train as the one-process run does.

Both "nodes" run on this machine (127.0.0.1, one gloo process each, CPU): the train
task is one of them, as in a deployment, and the test starts the other with the same
command (``launch.node_command``) a second host would run. The result must match the
one-process run within the tolerance of the two-process test (``test_launch.py``).
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from recsys_retrain import cycle
from recsys_retrain.challenger import training_inputs, worker_files
from recsys_retrain.evaluate import evaluate
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings
from recsys_retrain.train import launch
from recsys_retrain.train.checkpoints import load_checkpoint
from tests.train.test_launch import TINY, cycle_folder
from tests.train.worlds import synthetic_world

STATIC = {"policy": "static"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_several_nodes_meet_at_a_c10d_rendezvous_instead_of_standalone():
    s = Settings(train={**TINY, "processes": 2, "nnodes": 3, "rdzv_endpoint": "trainer-0.recsys:29400"})
    cmd = launch.node_command(Path("h.parquet"), Path("c.parquet"), Path("run/model"), s)
    assert cmd[3:8] == ["--nnodes=3", "--nproc_per_node=2", "--rdzv_backend=c10d",
                        "--rdzv_endpoint=trainer-0.recsys:29400", "--rdzv_id=recsys-train"]
    assert "--standalone" not in cmd and cmd[cmd.index("-m", 3) + 1] == launch.WORKER
    assert cmd[-2:] == ["--train-settings", str(Path("run/model") / launch.SETTINGS_FILE)]
    assert "--standalone" in launch.node_command(Path("h"), Path("c"), Path("o"), Settings(train={"processes": 2}))
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        Settings(train={"nnodes": 2})


@pytest.mark.slow  # one in-process run and one two-node run: about 20 s
def test_two_nodes_on_this_machine_train_as_one_process_does(tmp_path):
    if socket.gethostbyname(socket.gethostname()) != "127.0.0.1":  # torchrun's workers meet at this host's address
        pytest.skip("this host's name does not resolve to 127.0.0.1: the nodes would talk over a real interface")
    one = cycle.train(cycle_folder(tmp_path / "run1"), Settings(home=tmp_path / "h1", train=TINY, schedule=STATIC))

    endpoint = f"127.0.0.1:{free_port()}"
    settings = Settings(home=tmp_path / "h2", train={**TINY, "nnodes": 2, "rdzv_endpoint": endpoint}, schedule=STATIC)
    pulled = cycle_folder(tmp_path / "run2")
    p = CyclePaths(Path(pulled["run_dir"]))
    source, extra = worker_files(p, training_inputs(p, settings, None, None))  # what the train task writes too
    other = subprocess.Popen(launch.node_command(source, p.catalogue, p.model_dir, settings, extra),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        two = cycle.train(pulled, settings)  # the train task: node 0 or 1, whichever reaches the rendezvous first
        out, _ = other.communicate(timeout=300)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, out[-3000:]

    assert json.loads((p.model_dir / launch.SETTINGS_FILE).read_text())["nnodes"] == 2
    assert two["n_samples"] == one["n_samples"] and len(two["epoch_losses"]) == TINY["epochs"]
    assert two["n_steps"] <= one["n_steps"] // 2 + 3  # a world of two: each node ran half of the batches
    assert two["epoch_losses"][-1] == pytest.approx(one["epoch_losses"][-1], rel=0.25)
    history, _ = synthetic_world()
    holdout, _ = synthetic_world(seed=1)
    ndcg = {n: evaluate(load_checkpoint(Path(r["checkpoint"])), history, holdout, k=5).ndcg
            for n, r in (("one", one), ("two", two))}
    assert ndcg["two"] > 0.1  # a random ranking scores about 0.08 on this world
    assert ndcg["two"] == pytest.approx(ndcg["one"], abs=0.1)
