"""Data-stage benchmark on MovieLens-100K -> bench/results/data.json.

ingest_100k_s: ``recsys_retrain.data.ingest`` of all 100K events into an empty repository,
validation, features and materialization to the online store included (Feast
imported beforehand). window_20k_s: ``pull_window`` of the newest window holding
about 20K interactions, with every feature. profile_100k_s: ``recsys_retrain.profile.profile``
of all 100K events. Each is the best of ``--repeat`` runs. Goals on 2 cores: 10 s, 3 s, 1 s.

    .venv/bin/python bench/data.py [--repeat 3] [--feast] [--smoke] [--out DIR]

``--feast`` also times the same window through Feast's ``get_historical_features``
(the file offline store), the path the fast as-of join replaces. ``--smoke``: each timing once, written to ``--out``
or a temporary folder, never bench/results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.conftest (the data cache and feature-repo copies the tests use)

import pandas as pd  # noqa: E402
from tests.conftest import cache_dir, copy_feature_repo  # noqa: E402

from recsys_retrain.data.features import TS  # noqa: E402
from recsys_retrain.data.ingest import ingest  # noqa: E402
from recsys_retrain.data.load import load_movielens  # noqa: E402
from recsys_retrain.data.store import feast_point_in_time, pull_window  # noqa: E402
from recsys_retrain.profile import profile  # noqa: E402

GOALS = {"ingest_100k_s": 10.0, "window_20k_s": 3.0, "profile_100k_s": 1.0}


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--feast", action="store_true", help="also time Feast's historical retrieval")
    parser.add_argument("--smoke", action="store_true", help="each timing once; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for data.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 1
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-data-out-")) if args.smoke else ROOT / "bench" / "results")
    import feast  # noqa: F401  (import cost is not the ingest's)

    inter = load_movielens(cache_dir()).interactions
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    repos = iter(range(1000))

    def fresh_ingest() -> None:
        repo = copy_feature_repo(work / f"repo{next(repos)}")
        ingest(inter, repo)

    results: dict[str, object] = {}
    results["ingest_100k_s"] = best(fresh_ingest, args.repeat)
    repo = work / "repo0"
    ordered = inter.sort_values("timestamp")
    t0 = ordered.timestamp.iloc[-20_000].floor("D")
    t1 = ordered.timestamp.iloc[-1] + pd.Timedelta(seconds=1)
    window = pull_window(repo, t0, t1)
    results["window_rows"] = len(window)
    results["window_20k_s"] = best(lambda: pull_window(repo, t0, t1), args.repeat)
    results["profile_100k_s"] = best(lambda: profile(inter), args.repeat)
    if args.feast:
        from recsys_retrain.data.store import feature_store

        store = feature_store(repo)
        rows = window[["user_id", "item_id", "timestamp"]].rename(columns={"timestamp": TS})

        def via_feast() -> None:
            for key in ("user_id", "item_id"):
                feast_point_in_time(store, rows[[key, TS]], key)

        results["window_20k_feast_s"] = best(via_feast, 1)
    results["goals"] = GOALS
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    shutil.rmtree(work, ignore_errors=True)
    out = out_dir / "data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
