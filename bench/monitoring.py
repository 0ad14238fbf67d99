"""Monitoring evidence: after a 12-week replay through the DAGs, is every run in MLflow, the workspace and the report?

Runs ``retrain demo`` (every week: ingest, champion_monitor, drift_watch, and retrain_scheduled on
its cadence, each with ``dag.test()``) on ``WEEKS`` weeks of MovieLens-100K from ``START``, with the
injected drift on ``DRIFT_AT`` and a bad model promoted by hand after ``BAD_MODEL_AT``'s runs (the
monitor reverts it two weeks later), in a fresh home. Then, from what the DAG runs left:

- ``dag_runs``: DAG runs of the replay (monitor, drift watch, scheduled retrain; ingest logs no run);
  ``runs_logged``: monitoring runs in MLflow that match one of them (``dag_id`` and window);
- ``snapshots``: snapshots in the Evidently workspace's project (one per checked week);
- ``report_from_production_s``: ``retrain report --from START --to <end>``'s build (MLflow runs,
  registry history, cycle folders), and ``report_rows_equal_demo``: its weekly rows equal the rows
  of the demo's weeks (read from the cycle folders by the replay);
- ``verdict_mismatches``: signals (and verdicts) whose outcome in a week's ``drift.html`` / Evidently
  snapshot differs from the project's verdict in ``drift.json`` (goal 0);
- ``evidently_ui_projects``: the project names ``evidently ui`` on a free 127.0.0.1 port serves at
  ``/api/projects`` (a real HTTP request);
- ``alerts``: events in ``alerts.jsonl`` by kind (drift at the trigger, rejected challengers, reverts,
  failed tasks).

Writes bench/results/monitoring.json (``--out`` for another folder). ``--smoke``: two weeks, one
epoch, the drift on the second week.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess  # nosec B404  # runs this interpreter's own CLI
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # tests.conftest, for the data cache and the feature definitions
START, WEEKS, EVERY, DRIFT_AT, BAD_MODEL_AT = "1997-12-01", 12, 8, "1998-01-12", "1998-02-02"
SMOKE = {"start": "1998-01-05", "weeks": 2, "drift_at": "1998-01-12", "bad_model_at": "none", "epochs": 1}
DAG_OF_STEP = {"monitor": "champion_monitor", "drift_watch": "drift_watch", "retrain_scheduled": "retrain_scheduled"}


def sandbox(root: Path) -> tuple[Path, Path]:
    """A private home (with the downloaded data cache) and feature repository definitions."""
    from tests.conftest import sandbox as make_sandbox

    return make_sandbox(root)


def replay(home: Path, repo: Path, config: dict) -> tuple[dict, float]:
    """``retrain demo`` in a fresh home; its timeline.json and wall seconds."""
    args = ["--start", config["start"], "--weeks", str(config["weeks"]), "--every", str(config.get("every", EVERY)),
            "--drift-at", config["drift_at"], "--bad-model-at", config["bad_model_at"]]
    if config.get("epochs"):
        args += ["--epochs", str(config["epochs"])]
    env = {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_FEATURE_REPO": str(repo), "RETRAIN_DATA_ROOT": str(home.parent)}
    started = time.perf_counter()
    done = subprocess.run(  # nosec B603  # fixed argument list: this interpreter's own CLI
        [sys.executable, "-m", "recsys_retrain.cli", "demo", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"demo failed: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads((home / "timeline" / "timeline.json").read_text()), time.perf_counter() - started


def verdict_mismatches(runs_dir: Path) -> tuple[int, int]:
    """(mismatches, checks): per week, each tested signal's and the verdict's outcome in the snapshot and on the page."""
    from recsys_retrain.drift.evidently_metrics import outcomes

    mismatches = checks = 0
    for drift in sorted(runs_dir.glob("*/drift/drift.json")):
        payload = json.loads(drift.read_text())
        verdict, page = payload["verdict"], (drift.parent / "drift.html").read_text()
        shown = outcomes(payload["evidently"])
        for s in verdict["signals"]:
            if not s["tested"]:
                continue
            checks += 1
            text = re.escape(f"{s['name']}: {s['method']} {s['value']:.4f} vs calibrated threshold {s['threshold']:.4f}")
            on_page = re.search(text + r"[^>]*-> " + ("drifted" if s["drifted"] else "no drift"), page) is not None
            mismatches += (shown.get(s["name"]) != s["drifted"]) or not on_page
        checks += 1
        mismatches += (shown.get("verdict") != (verdict["severity"] != "none")) or \
            f"drift verdict: {verdict['severity']}" not in page
    return mismatches, checks


def measure(home: Path, repo: Path, timeline: dict, config: dict) -> dict:
    from recsys_retrain.monitoring import workspace
    from recsys_retrain.monitoring.report import production_report
    from recsys_retrain.monitoring.runs import search
    from recsys_retrain.report_page import week_rows
    from recsys_retrain.settings import Settings

    settings = Settings(home=home, feature_repo=repo)
    weeks = timeline["weeks"]
    dag_runs = {(DAG_OF_STEP[step], w["window"]) for w in weeks for step in w["timings"] if step in DAG_OF_STEP}
    runs = search(settings)
    logged = {(r["tags.dag_id"], f"{r['tags.window_start']}/{r['tags.window_end']}") for _, r in runs.iterrows()
              if isinstance(r["tags.window_start"], str)}
    end = weeks[-1]["window"].split("/")[1][:10]
    built = production_report(settings, config["start"], end, home / "report-from-production")
    mismatches, checks = verdict_mismatches(settings.runs_dir)
    process, url = workspace.start_ui(settings)
    try:
        projects = [p["name"] for p in workspace.ui_projects(url)]
    finally:
        process.terminate()
        process.wait(timeout=30)
    alerts_file = home / "alerts.jsonl"
    events = [json.loads(line) for line in alerts_file.read_text().splitlines()] if alerts_file.exists() else []
    return {
        "weeks": len(weeks),
        "dag_runs": len(dag_runs),
        "runs_logged": len(logged & dag_runs),
        "runs_without_dag_run": sorted(f"{d} {w[:10]}" for d, w in logged - dag_runs),
        "snapshots": len(workspace.snapshots(settings)),
        "report_from_production_s": built["seconds"],
        "report_rows_equal_demo": week_rows(built["weeks"]) == week_rows(weeks),
        "report_rows": len(built["rows"]),
        "verdict_mismatches": mismatches,
        "verdict_checks": checks,
        "evidently_ui_projects": projects,
        "alerts": dict(Counter(e["event"] for e in events)),
        "promotions": [w["window"][:10] for w in weeks if w["promoted"]],
        "reverts": [w["window"][:10] for w in weeks if w["reverted"]],
        "injected": {w["window"][:10]: w["injected"] for w in weeks if w["injected"]},
        "replay_s": timeline["seconds"],
        "trains": timeline["trains"],
        "monitor_step_s": round(sum(w["timings"].get("monitor", 0.0) for w in weeks), 1),
    }


def goals(r: dict) -> dict[str, bool]:
    return {
        "every_dag_run_logged": r["runs_logged"] == r["dag_runs"] and not r["runs_without_dag_run"],
        "snapshot_per_week": r["snapshots"] == r["weeks"],
        "report_rows_equal_demo": r["report_rows_equal_demo"] and r["report_rows"] == r["weeks"],
        "verdict_mismatches==0": r["verdict_mismatches"] == 0 and r["verdict_checks"] > 0,
        "ui_serves_project": r["evidently_ui_projects"] == ["two_tower drift"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two weeks, one epoch; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for monitoring.json (default bench/results; with --smoke a temporary folder)")
    args = parser.parse_args(argv)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-monitoring-out-")) if args.smoke else RESULTS)
    config = SMOKE if args.smoke else {"start": START, "weeks": WEEKS, "drift_at": DRIFT_AT, "bad_model_at": BAD_MODEL_AT}
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        home, repo = sandbox(Path(tmp))
        timeline, wall = replay(home, repo, config)
        result = {"config": {**config, "every": EVERY}, "demo_s": round(wall, 1), **measure(home, repo, timeline, config)}
    result["goals"] = goals(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "monitoring.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
