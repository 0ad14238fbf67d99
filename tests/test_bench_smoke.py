"""Every benchmark `make bench` runs, end to end in its --smoke mode, so that target cannot break unseen.

Each runs as `make bench` runs it (`python bench/<name>.py`, from the repository root, in a fresh
interpreter) with `--smoke --out <tmp>`; it must exit 0, write its JSON there with the keys the
committed results have, and leave bench/results/ as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess  # nosec B404  # runs this interpreter on the repository's own scripts
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TIMEOUT_S = 900

# benchmark -> (the JSON it writes, keys it must hold, other files it writes beside it)
EXPECTED = {
    "quality": ("quality.json", ("ndcg10_model", "ndcg10_ease", "ndcg10_pop", "ndcg10_recent_pop", "model_vs_ease", "ci95_vs_ease",
                                 "ci95_vs_recent_pop", "test_users", "cold_users", "goals", "bench_s"), ()),
    "train_speed": ("train_speed.json", ("samples_per_s", "bare_torchrec_samples_per_s", "ratio", "warmup_batches",
                                         "repeats", "score_matrix", "goals"), ()),
    "data": ("data.json", ("ingest_100k_s", "window_20k_s", "profile_100k_s", "goals"), ()),
    "drift": ("drift.json", ("detection", "false_positive_rate", "prediction_score_fpr", "prediction_score_pairs", "drift_100k_s",
                             "drift_1m_s", "goals"), ("drift.png",)),
    "decisions": ("decisions.json", ("bad_rejected", "bad_total", "revert_delay_windows", "gate_s", "goals"), ()),
    "pipeline": ("pipeline.json", ("dag_parse_s_max", "cycle_s", "demo_s", "goals"), ()),
    "faults": ("faults.json", ("scenarios", "survived", "data_lost_rows", "bad_promotions", "per_scenario"), ()),
    "scheduler": ("scheduler.json", ("regimes", "heldout", "goals", "bench_s", "machine"),
                  ("scheduler.png", "scheduler_runs.jsonl")),
    "sparse_optimizer": ("sparse_optimizer.json", ("ndcg10_adagrad", "ndcg10_rowwise_adagrad", "rowwise_minus_exact",
                                                   "ci95"), ()),
    "backtest": ("backtest.json", ("datasets", "goals", "protocol", "refit_modes"), ("backtest_movielens.png", "backtest_synthetic.png")),
    "serve": ("serve.json", ("movielens", "synthetic", "goals", "machine"), ()),
    "monitoring": ("monitoring.json", ("runs_logged", "dag_runs", "snapshots", "report_from_production_s",
                                       "report_rows_equal_demo", "verdict_mismatches", "evidently_ui_projects",
                                       "alerts", "goals"), ()),
    "scale": ("scale.json", ("sizes", "evaluate_10k_x_50k", "train_50k_items", "goals", "machine"), ()),
    "offline_store": ("offline_store.json", ("sizes", "machine", "smoke", "bench_s"), ()),
    "distributed": ("distributed.json", ("celery_cycle_s", "local_cycle_s", "tasks_by_worker", "train_queue_ok",
                                         "two_node_vs_one_max_abs_diff", "goals"), ()),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Digest of every file under ``folder`` (the committed results)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_benchmark_of_make_bench_has_a_smoke_check():
    makefile = (ROOT / "Makefile").read_text()
    bench_line = next(line for line in makefile.splitlines() if "for b in" in line and "bench/$$b.py" in line)
    names = bench_line.split("for b in", 1)[1].split(";", 1)[0].split()
    assert names == list(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_benchmark_smoke(name: str, tmp_path: Path):
    filename, keys, beside = EXPECTED[name]
    before = snapshot(RESULTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(  # nosec B603  # fixed argument list
        [sys.executable, f"bench/{name}.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"bench/{name}.py --smoke exited {done.returncode}:\n{done.stderr[-3000:]}"
    result = json.loads((tmp_path / filename).read_text())
    assert not [k for k in keys if k not in result], f"{filename} lacks keys; has {sorted(result)}"
    for other in beside:
        assert (tmp_path / other).is_file(), f"bench/{name}.py --smoke wrote no {other}"
    goals = result["regimes"]["movielens"].get("goals") if name == "scheduler" else result.get("goals")
    if name not in ("quality", "train_speed", "faults", "sparse_optimizer", "offline_store"):  # the ones with a goals block
        assert isinstance(goals, dict) and goals, f"{filename} has no goals block"
    assert snapshot(RESULTS) == before, f"bench/{name}.py --smoke changed bench/results/"


def test_scheduler_smoke_runs_are_one_regime_one_seed_and_short():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scheduler_smoke", ROOT / "bench" / "scheduler.py")
    scheduler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scheduler)
    tasks = scheduler.smoke_tasks()
    assert {t["regime"] for t in tasks} == {"movielens"} and {t["seed"] for t in tasks} == {0}
    assert {t["method"] for t in tasks} == {"adaptive", "default", "grid"}
    assert all(t["max_epochs"] == scheduler.SMOKE_EPOCHS for t in tasks)
