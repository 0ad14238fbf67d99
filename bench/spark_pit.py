"""Feast on Spark against the local path: point-in-time features of a whole synthetic log (bench/distributed.py).

The log (``recsys_retrain.synthetic``, size S2: the 10^6-event size of bench/scale.py, one year, one
drift of each kind) is bootstrapped into two copies of ``features/``: one on the file offline store
(``feature_store.yaml``, the statistics views computed by pandas) and one on the Spark offline store
(``feature_store.spark.yaml``, ``local[2]``, the statistics views computed by Spark SQL). Then
``pull_window`` of the whole log from each, side by side on the same machine:

- ``local_pit_s``: the file store's path (pandas as-of join of the parquet files);
- ``spark_pit_s``: Feast's ``get_historical_features`` through the Spark store (its session already
  started: ``spark_start_s`` is apart);
- ``spark_pit_equal``: the two windows are equal, row for row (``pandas.testing.assert_frame_equal``);
- ``local_stats_s`` / ``spark_bootstrap_s``: the bootstraps' time (statistics views from the rolling
  state, history, log partitions, registry);
- ``spark_stats_s``: Spark SQL's whole-log recomputation of the statistics views
  (``recsys_retrain.data.spark_stats``), and ``spark_stats_equal``: its rows equal what ingest stored.

``--smoke``: a 20,000-event log.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"full": "S2", "smoke": "smoke"}
DRIVER_MEMORY = "6g"  # local[2]: the driver is the executor


@contextmanager
def offline_store(kind: str):
    """``RETRAIN_OFFLINE_STORE`` set to ``kind`` inside (Settings reads it on each call)."""
    before = os.environ.get("RETRAIN_OFFLINE_STORE")
    os.environ["RETRAIN_OFFLINE_STORE"] = kind
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RETRAIN_OFFLINE_STORE", None)
        else:
            os.environ["RETRAIN_OFFLINE_STORE"] = before


def _timed(fn, *args):
    began = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - began, 2)


def synthetic_log(size: str, folder: Path):
    """The synthetic log of ``size`` (bench/scale.py's sizes) as RawData, and its end."""
    import pandas as pd

    from recsys_retrain.synthetic import SIZES as NAMED, default_drifts, load_synthetic, synthesize

    base = replace(NAMED["S1"], n_events=20_000, n_users=300, n_items=500, days=91) if size == "smoke" else NAMED[size]
    config = replace(base, drifts=default_drifts(base.days))
    log = synthesize(config, folder)
    end = pd.Timestamp(config.start, tz="UTC") + pd.Timedelta(days=config.days)
    return load_synthetic(log.folder), end


def spark_missing() -> str | None:
    """Why Spark cannot run here (PySpark or Java missing), or None."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install -e '.[spark]')"
    if shutil.which("java") is None:
        return "no Java runtime (make java)"
    return None


def spark_vs_local(work: Path, smoke: bool) -> dict:
    """Both repositories from one log; the whole log's point-in-time window from each."""
    import pandas as pd

    from recsys_retrain.cycle import HISTORY_START
    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.data.spark_stats import spark_session, stats_tables
    from recsys_retrain.data.store import pull_window
    from recsys_retrain.resources import copy_definitions

    size = SIZES["smoke" if smoke else "full"]
    raw, end = synthetic_log(size, work / "log")
    repos = {kind: copy_definitions(ROOT / "features", work / kind) for kind in ("default", "spark")}
    out: dict = {"size": size, "events": len(raw.interactions), "users": int(raw.interactions.user_id.nunique()),
                 "items": int(raw.interactions.item_id.nunique())}
    with offline_store("default"):
        _, out["local_stats_s"] = _timed(bootstrap_feature_repo, raw, repos["default"])
        local, out["local_pit_s"] = _timed(pull_window, repos["default"], HISTORY_START, end)
    yaml = repos["spark"] / "feature_store.spark.yaml"  # the whole log's statistics, collected to pandas, need more than 2 GB
    yaml.write_text(yaml.read_text().replace('spark.driver.memory: "2g"', f'spark.driver.memory: "{DRIVER_MEMORY}"'))
    with offline_store("spark"):
        session, out["spark_start_s"] = _timed(spark_session, repos["spark"])
        _, out["spark_bootstrap_s"] = _timed(bootstrap_feature_repo, raw, repos["spark"])
        spark, out["spark_pit_s"] = _timed(pull_window, repos["spark"], HISTORY_START, end)
        stats, out["spark_stats_s"] = _timed(stats_tables, session, raw.interactions)
        out["spark_conf"] = {k: session.conf.get(k) for k in ("spark.master", "spark.driver.memory",
                                                              "spark.sql.shuffle.partitions")}
    out["rows"] = len(local)
    out["spark_pit_equal"] = _equal(spark, local)
    out["spark_stats_equal"] = all(  # Spark SQL's whole-log recomputation against what ingest stored
        _equal(stats[n].reset_index(drop=True),
               pd.read_parquet(repos["default"] / "data" / n).sort_values([key, "event_timestamp"], kind="stable")
               .reset_index(drop=True), rtol=1e-12, check_dtype=False)
        for n, key in (("user_stats", "user_id"), ("item_stats", "item_id"))
    )
    session.stop()
    return out


def _equal(a, b, **tolerance) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(a, b, check_exact=not tolerance, **tolerance)
    except AssertionError as exc:
        print(f"not equal: {str(exc)[:500]}", flush=True)
        return False
    return True
