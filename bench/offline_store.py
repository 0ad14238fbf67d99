"""Offline store engines: what a cycle pulls, through each, with its time and peak memory.

A synthetic log (``recsys_retrain.synthetic``, bench/scale.py's sizes S1 and S2: 10^5 and 10^6 events over
a year, one drift of each kind) is bootstrapped whole into two copies of ``features/``: one under the
default configuration (``feature_store.yaml``) and one under ``RETRAIN_OFFLINE_STORE=duckdb``
(``feature_store.duckdb.yaml``). Then, each engine in its own fresh interpreter (so that its peak memory
is its own), the pull of ``recsys_retrain.cycle.pull`` on the log's last week: ``pull_window`` of the
``train.history_days`` (365) before the week, then of the week. Engines:

- ``default``: the embedded default, which bypasses Feast's retrieval (``recsys_retrain.data.store``
  joins the daily parquet parts itself, an as-of join);
- ``duckdb``: Feast's ``get_historical_features`` on its DuckDB offline store (ibis), same parquet files;
- ``feast_file``: Feast's ``get_historical_features`` on its own file offline store (dask), the default
  repository, as ``pull_window`` would call it if it did not bypass it; stopped past ``FEAST_FILE_LIMIT``.

Per engine: ``history_s``, ``window_s`` and their sum ``pull_s``; ``rows``; ``peak_rss_mb`` (the child's
peak resident memory, its imports included) and ``import_rss_mb`` (after the imports, before the clock
starts: a Feast engine's offline store module is imported by then);
``equal_to_default``: both frames equal the default path's, row for row (``pandas.testing``). Per size,
``bootstrap_s`` of each repository (the DuckDB one registers absolute paths: ``features/data_sources.py``).
A child that runs past its time or memory limit is stopped and reported as such, never estimated.

Writes bench/results/offline_store.json (``--out`` for another folder; ``--smoke`` never writes bench/results). ``--smoke``: a
20,000-event log, the same three engines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess  # nosec B404  # runs this interpreter on this script, one engine per process
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENGINES = ("default", "duckdb", "feast_file")
REPO_OF = {"default": "default", "duckdb": "duckdb", "feast_file": "default"}  # the repository each engine reads
STORE_ENV = {"default": None, "duckdb": "duckdb", "feast_file": None}  # RETRAIN_OFFLINE_STORE of each
LIMIT_S, LIMIT_MB = 900, 12_288  # any child
FEAST_FILE_LIMIT = (300, 8_192)  # seconds, MB: Feast's file store needs far more of both at S2


def _rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the forking parent)."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
        if line:
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _env(engine: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_OFFLINE_STORE"}
    if STORE_ENV[engine]:
        env["RETRAIN_OFFLINE_STORE"] = STORE_ENV[engine]
    return env


def build(size: str, work: Path) -> tuple[dict, dict]:
    """The log of ``size`` bootstrapped into both repositories; their folders and the week's bounds."""
    import pandas as pd

    from bench.scale import config_for
    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.resources import copy_definitions
    from recsys_retrain.synthetic import load_synthetic, synthesize

    import feast  # noqa: F401  (imported before either bootstrap's clock starts, not inside the first)

    config = config_for(size)
    raw = load_synthetic(synthesize(config, work / "log").folder)
    end = pd.Timestamp(config.start, tz="UTC") + pd.Timedelta(days=config.days)
    info = {"events": len(raw.interactions), "users": config.n_users, "items": config.n_items, "days": config.days,
            "t0": (end - pd.Timedelta(days=7)).isoformat(), "t1": end.isoformat()}
    repos = {}
    for name in ("default", "duckdb"):
        repos[name] = copy_definitions(ROOT / "features", work / name)
        saved = os.environ.pop("RETRAIN_OFFLINE_STORE", None)
        if name == "duckdb":
            os.environ["RETRAIN_OFFLINE_STORE"] = "duckdb"
        began = time.perf_counter()
        try:
            bootstrap_feature_repo(raw, repos[name])
        finally:
            os.environ.pop("RETRAIN_OFFLINE_STORE", None)
            if saved is not None:
                os.environ["RETRAIN_OFFLINE_STORE"] = saved
        info[f"bootstrap_{name}_s"] = round(time.perf_counter() - began, 2)
        print(f"[{size}] bootstrap ({name}) {info[f'bootstrap_{name}_s']} s", flush=True)
    return info, repos


def pull(engine: str, repo: Path, t0: str, t1: str, frames: Path) -> dict:
    """In the child: the cycle's two pulls through ``engine``, timed; the frames written to ``frames``."""
    from datetime import timedelta

    import pandas as pd

    from recsys_retrain.airflow_local import quiet_libraries
    from recsys_retrain.cycle import HISTORY_START
    from recsys_retrain.data import features as F
    from recsys_retrain.data.store import feast_window, feature_store, pull_window, read_events
    from recsys_retrain.io import utc
    from recsys_retrain.settings import Settings

    if engine != "default":  # the Feast engines' imports are no part of the pull's time
        import importlib

        importlib.import_module("feast.infra.offline_stores." + ("duckdb" if engine == "duckdb" else "dask"))
    quiet_libraries()
    start, end = utc(t0), utc(t1)
    spans = {"history": (max(HISTORY_START, start - timedelta(days=Settings().train.history_days)), start),
             "window": (start, end)}

    def through_feast_file(lo, hi) -> pd.DataFrame:
        events = read_events(repo, lo, hi).rename(columns={"timestamp": F.TS})
        out = feast_window(feature_store(repo), events).rename(columns={F.TS: "timestamp"})
        return F.typed(out.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reindex(columns=F.WINDOW_COLUMNS))

    read = through_feast_file if engine == "feast_file" else lambda lo, hi: pull_window(repo, lo, hi)
    out = {"import_rss_mb": round(_rss_mb())}
    for name, (lo, hi) in spans.items():
        began = time.perf_counter()
        frame = read(lo, hi)
        out[f"{name}_s"] = round(time.perf_counter() - began, 2)
        out[f"{name}_rows"] = len(frame)
        print(f"  [{engine}] {name}: {len(frame)} rows in {out[f'{name}_s']} s (peak RSS {_rss_mb():.0f} MB)", flush=True)
        frame.reset_index(drop=True).to_parquet(frames / f"{engine}_{name}.parquet")
    out["pull_s"] = round(out["history_s"] + out["window_s"], 2)
    out["peak_rss_mb"] = round(_rss_mb())
    return out


def run_child(engine: str, repo: Path, info: dict, frames: Path) -> dict:
    """``pull`` of ``engine`` in a fresh interpreter, stopped past its time or memory limit."""
    limit_s, limit_mb = FEAST_FILE_LIMIT if engine == "feast_file" else (LIMIT_S, LIMIT_MB)
    result = frames / f"{engine}.json"
    args = [sys.executable, __file__, "--child", engine, "--repo", str(repo), "--t0", info["t0"], "--t1", info["t1"],
            "--frames", str(frames), "--child-out", str(result)]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(engine))  # nosec B603  # this script, fixed args
    began, peak = time.perf_counter(), 0.0
    while proc.poll() is None:
        peak = max(peak, _proc_rss_mb(proc.pid))
        over = "time" if time.perf_counter() - began > limit_s else "memory" if peak > limit_mb else None
        if over:
            proc.kill()
            proc.wait()
            return {"stopped": f"past its {over} limit ({limit_s} s, {limit_mb} MB)",
                    "after_s": round(time.perf_counter() - began, 1), "rss_seen_mb": round(peak)}
        time.sleep(0.25)
    if proc.returncode != 0 or not result.exists():
        return {"error": f"exit status {proc.returncode}"}
    return json.loads(result.read_text())


def _proc_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def equal_to_default(engine: str, frames: Path) -> bool | None:
    """Both of ``engine``'s frames equal the default path's, row for row; None where it wrote none."""
    import pandas as pd

    try:
        for name in ("history", "window"):
            pd.testing.assert_frame_equal(pd.read_parquet(frames / f"{engine}_{name}.parquet"),
                                          pd.read_parquet(frames / f"default_{name}.parquet"))
    except FileNotFoundError:
        return None
    except AssertionError as exc:
        print(f"  [{engine}] not equal to the default path: {str(exc)[:400]}", flush=True)
        return False
    return True


def one_size(size: str, work: Path) -> dict:
    info, repos = build(size, work)
    frames = work / "frames"
    frames.mkdir()
    for engine in ENGINES:
        info[engine] = run_child(engine, repos[REPO_OF[engine]], info, frames)
        if engine != "default":
            info[engine]["equal_to_default"] = equal_to_default(engine, frames)
        print(f"[{size}] {engine}: {info[engine]}", flush=True)
    base, duck = info["default"].get("pull_s"), info["duckdb"].get("pull_s")
    info["duckdb_over_default_s"] = round(duck / base, 2) if base and duck else None
    return info


def main(smoke: bool) -> dict:
    sizes = ["smoke"] if smoke else ["S1", "S2"]
    out: dict = {"sizes": {}, "machine": f"{os.cpu_count()} cores", "smoke": smoke}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out["sizes"][size] = one_size(size, Path(tmp))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 20,000-event log instead of S1 and S2")
    parser.add_argument("--out", type=Path, default=None, help="folder for offline_store.json (default bench/results; with --smoke a temporary folder)")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--t0", help=argparse.SUPPRESS)
    parser.add_argument("--t1", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.child_out.write_text(json.dumps(pull(args.child, args.repo, args.t0, args.t1, args.frames)))
        sys.exit(0)
    began = time.perf_counter()
    result = main(args.smoke)
    result["bench_s"] = round(time.perf_counter() - began, 1)
    folder = args.out or (Path(tempfile.mkdtemp(prefix="offline_store_")) if args.smoke else ROOT / "bench" / "results")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "offline_store.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {folder / 'offline_store.json'}", flush=True)
