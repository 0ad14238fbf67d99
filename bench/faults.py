"""Fault-injection benchmark: runs the whole ``tests/faults/`` suite and counts what survived.

Each file in ``tests/faults/`` injects one fault into the real pipeline (training
killed mid-epoch, NaN loss, a corrupted or partial ingest batch, the MLflow server
down during the gate, one DAG run executed twice, Redis down during
materialization, disk full on a checkpoint write) and records two JUnit properties
before asserting them: ``data_lost_rows`` and ``bad_promotions``. This script runs
pytest on the folder with ``--junitxml`` and sums them, so a scenario added there is
counted here without a change.

Keys of ``bench/results/faults.json``: ``scenarios`` (test cases run), ``survived``
(passed), ``data_lost_rows`` and ``bad_promotions`` (sums over the scenarios), and one
entry per scenario with its outcome, its measured values and its seconds. Goals: every
scenario survived, 0 rows lost, 0 bad promotions. Exit status 1 if a goal is missed.

``--smoke`` runs only ``SMOKE_SCENARIOS`` (the quickest file) and writes to ``--out`` or a
temporary folder, never bench/results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404  # runs this interpreter's pytest with an argument list
import sys
import tempfile
import time
import xml.etree.ElementTree as ET  # nosec B405  # parses the report pytest just wrote, not outside input
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "faults.json"
SUITE = "tests/faults"
SMOKE_SCENARIOS = "tests/faults/test_nan_rollback.py"


def run_suite(report: Path, suite: str = SUITE) -> tuple[int, float]:
    """``pytest tests/faults`` with a JUnit report; returns pytest's exit code and the wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(  # nosec B603  # fixed argument list
        [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "-o", "junit_family=xunit1"],  # xunit1 keeps the recorded properties
        cwd=ROOT, env={**os.environ}, text=True,
    )
    return done.returncode, time.perf_counter() - started


def scenarios(report: Path) -> list[dict]:
    """One dict per test case: name, outcome, recorded properties, seconds."""
    out = []
    for case in ET.parse(report).getroot().iter("testcase"):  # nosec B314  # our own pytest report
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out.append({
            "scenario": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}",
            "outcome": "failed" if failed else "skipped" if skipped else "passed",
            "data_lost_rows": int(props["data_lost_rows"]) if "data_lost_rows" in props else None,
            "bad_promotions": int(props["bad_promotions"]) if "bad_promotions" in props else None,
            "seconds": round(float(case.get("time", 0)), 1),
        })
    return out


def summarise(cases: list[dict], seconds: float) -> dict:
    """The benchmark's keys; a scenario that recorded nothing counts as surviving nothing."""
    survived = [c for c in cases if c["outcome"] == "passed" and c["data_lost_rows"] is not None]
    return {
        "scenarios": len(cases),
        "survived": len(survived),
        "data_lost_rows": sum(c["data_lost_rows"] or 0 for c in cases),
        "bad_promotions": sum(c["bad_promotions"] or 0 for c in cases),
        "unmeasured": [c["scenario"] for c in cases if c["data_lost_rows"] is None],
        "seconds": round(seconds, 1),
        "per_scenario": cases,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=f"run only {SMOKE_SCENARIOS}; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for faults.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    out = (args.out or (Path(tempfile.mkdtemp(prefix="bench-faults-")) if args.smoke else OUT.parent)) / OUT.name
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.xml"
        code, seconds = run_suite(report, SMOKE_SCENARIOS if args.smoke else SUITE)
        if not report.exists():
            print(f"pytest wrote no report (exit code {code})", file=sys.stderr)
            return 1
        result = summarise(scenarios(report), seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps({k: v for k, v in result.items() if k != "per_scenario"}))
    met = result["scenarios"] > 0 and result["survived"] == result["scenarios"]
    met = met and result["data_lost_rows"] == 0 and result["bad_promotions"] == 0
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
