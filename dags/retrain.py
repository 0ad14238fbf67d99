"""Scheduled retraining: one cycle per weekly window of fresh interactions.

cycle.pull -> cycle.validate -> cycle.drift -> cycle.calibrate -> cycle.train -> cycle.evaluate -> cycle.gate
-> cycle.promote_or_keep (a branch) -> cycle.refit -> cycle.promote | cycle.keep -> cycle.decided (the join)
(the shared task group in ``recsys_common``; ``validate`` also writes the window's
data profile). Each task calls one function of ``recsys_retrain.cycle`` and passes small
dicts (paths, counts, decisions). The window is the run's data interval, never
``now()``, so re-running a run redoes the same window and reuses its registry
version; the ``window_start``/``window_end`` Params replace it, and ``epochs``,
``gate_min_delta``, ``gate_tolerance``, ``gate_policy``, ``drift_alpha``, ``schedule_policy`` and ``refit``
override the settings for one run. The cadence is a cron expression, weekly on
Mondays unless ``RETRAIN_DAG_SCHEDULE`` says otherwise (read from the environment at
parse time: no Variable, no database; ``none`` leaves only manual and triggered runs). Heavy libraries are imported inside the
tasks, never at parse time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import CYCLE_PARAMS, DEFAULT_ARGS, WINDOW_PARAMS, retrain_cycle  # noqa: E402

SCHEDULE = os.environ.get("RETRAIN_DAG_SCHEDULE", "0 0 * * 1")


@dag(
    dag_id="retrain_scheduled",
    schedule=None if SCHEDULE.strip().lower() == "none" else CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    params={**CYCLE_PARAMS, **WINDOW_PARAMS},
    tags=["retrain", "scheduled"],
    doc_md=__doc__,
)
def retrain_scheduled():
    retrain_cycle()


dag = retrain_scheduled()

if __name__ == "__main__":
    dag.test()
