"""Pipeline benchmark: DAG parse time, one full cycle, the timeline demo (the backtest is bench/backtest.py).

Keys written to bench/results/pipeline.json:

``dag_parse_s_max``  slowest DAG file's import time (fresh interpreter each, best of three, Airflow
    and one warm-up DAG already loaded, as a running DAG processor has them).
``cycle_s``  one full retrain cycle in-process (pull, validate, drift, calibrate,
    train, evaluate, gate) on the MovieLens-100K week ``CYCLE_WINDOW`` with the
    default settings, store already bootstrapped, excluding process start.
``demo_s``  wall time of ``retrain demo`` (the whole timeline through the DAGs, fresh
    home), process start included; ``demo`` holds its week count, trainings and events.

Each part can run alone (``--only cycle,demo``); the others keep their values from the
previous results file. Goals are checked on whatever the file then holds.

``--smoke``: every part on the least it takes (one parse per DAG file, one training epoch,
a one-week demo), written to ``--out`` or a temporary folder, never
bench/results (nor merged with the results file there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "pipeline.json"
CYCLE_WINDOW = ("1998-04-13", "1998-04-20")
PARTS = ("parse", "cycle", "demo")
sys.path.insert(0, str(ROOT))  # tests.conftest, imported by sandbox()

PROBE = """
import importlib.util, sys, time
import airflow.sdk, pendulum  # Airflow's own import cost is not the DAG file's: the DAG processor has these loaded
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task, task_group  # lazy in airflow.sdk
@dag(schedule=None)  # warm-up: a DAG processor has parsed DAGs before (timetables, operators, Params loaded)
def warm_up():
    task(lambda: None, task_id="t")()
warm_up()
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(time.perf_counter() - start)
"""


def dag_parse(repeat: int = 3) -> dict[str, float]:
    """Seconds to import each DAG file, best of ``repeat`` fresh interpreters."""
    out = {}
    for path in sorted((ROOT / "dags").glob("*.py")):
        runs = [float(subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True,
                                     check=True, timeout=120).stdout.strip().splitlines()[-1]) for _ in range(repeat)]
        out[path.name] = round(min(runs), 4)
    return out


def env_for(home: Path, repo: Path) -> dict[str, str]:
    return {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_FEATURE_REPO": str(repo), "RETRAIN_DATA_ROOT": str(home.parent)}


def sandbox(root: Path) -> tuple[Path, Path]:
    """A private home (with the downloaded data cache) and feature repository definitions."""
    from tests.conftest import sandbox as make_sandbox

    return make_sandbox(root)


def cycle_seconds(root: Path, smoke: bool = False) -> dict[str, float]:
    """One full cycle in this process on ``CYCLE_WINDOW``; seconds per step and in total."""
    import pandas as pd

    from recsys_retrain import cycle
    from recsys_retrain.airflow_local import quiet_libraries
    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.data.load import RawData, load_movielens
    from recsys_retrain.settings import Settings

    quiet_libraries()
    home, repo = sandbox(root)
    raw = load_movielens(home / "cache")
    inter = raw.interactions[raw.interactions["timestamp"] < pd.Timestamp(CYCLE_WINDOW[1], tz="UTC")]
    bootstrap_feature_repo(RawData(inter, raw.users, raw.items), repo)
    s = Settings(home=home, feature_repo=repo)
    if smoke:
        s = s.model_copy(update={"train": s.train.model_copy(update={"epochs": 1})})
    steps: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        steps[name] = round(time.perf_counter() - t, 2)
        return out

    pulled = timed("pull", cycle.pull, *CYCLE_WINDOW, settings=s)
    pulled = timed("validate", cycle.validate, pulled, settings=s)
    drifted = timed("drift", cycle.drift, pulled, settings=s)
    plan = timed("calibrate", cycle.calibrate, pulled, drifted, settings=s)
    trained = timed("train", cycle.train, pulled, settings=s, plan=plan)
    evaluated = timed("evaluate", cycle.evaluate, pulled, trained, settings=s)
    timed("gate", cycle.gate, pulled, drifted, trained, evaluated, settings=s)
    return {"cycle_s": round(sum(steps.values()), 1), "cycle_steps_s": steps, "cycle_epochs": len(trained["epoch_losses"])}


def demo_seconds(root: Path, smoke: bool = False) -> dict:
    """``retrain demo`` with its defaults in a fresh home; wall time and what it did."""
    home, repo = sandbox(root)
    started = time.perf_counter()
    extra = ["--weeks", "1", "--epochs", "1"] if smoke else []
    done = subprocess.run([sys.executable, "-m", "recsys_retrain.cli", "demo", *extra], env=env_for(home, repo), cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo failed: {done.stderr[-2000:]}")
    timeline = json.loads((home / "timeline" / "timeline.json").read_text())
    weeks = timeline["weeks"]
    return {
        "demo_s": round(seconds, 1),
        "demo": {
            "weeks": len(weeks), "trains": timeline["trains"], "replay_s": timeline["seconds"],
            "trained_by": {w["window"][:10]: w["trained_by"] for w in weeks if w["trained_by"]},
            "promotions": sum(w["promoted"] for w in weeks), "reverts": [w["window"][:10] for w in weeks if w["reverted"]],
            "injected": {w["window"][:10]: w["injected"] for w in weeks if w["injected"]},
            "step_s": {k: round(sum(w["timings"].get(k, 0.0) for w in weeks), 1)
                       for k in ("ingest", "monitor", "drift_watch", "retrain_scheduled", "inject")},  # monitor includes served scoring
        },
    }


def goals(r: dict) -> dict[str, bool | None]:
    return {
        "dag_parse_s_max<=0.5": r["dag_parse_s_max"] <= 0.5 if "dag_parse_s_max" in r else None,
        "cycle_s<=60": r["cycle_s"] <= 60 if "cycle_s" in r else None,
        "demo_s<=600": r["demo_s"] <= 600 if "demo_s" in r else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run ({', '.join(PARTS)})")
    parser.add_argument("--smoke", action="store_true", help="every part on the least it takes; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for pipeline.json "
                        "(default bench/results; with --smoke a temporary folder)")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-pipeline-out-")) if args.smoke else RESULTS.parent)
    results = out_dir / RESULTS.name
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    result: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if "parse" in parts:
            result["dag_parse_s"] = dag_parse(1 if args.smoke else 3)
            result["dag_parse_s_max"] = max(result["dag_parse_s"].values())
        runs = {"cycle": lambda root: cycle_seconds(root, args.smoke), "demo": lambda root: demo_seconds(root, args.smoke)}
        for part, fn in runs.items():
            if part in parts:
                result.update(fn(Path(tmp) / part))
                print(f"{part} done", flush=True)
    latest = json.loads(results.read_text()) if results.exists() else {}  # read late: another part may have finished
    result = {**latest, **result}
    result["goals"] = goals(result)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = results.with_name(f".{results.name}.tmp-{os.getpid()}")
    tmp_file.write_text(json.dumps(result, indent=2))
    os.replace(tmp_file, results)
    print(json.dumps({k: result[k] for k in result if k not in ("dag_parse_s",)}, indent=2))


if __name__ == "__main__":
    main()
