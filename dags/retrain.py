"""Scheduled retraining: one cycle per weekly window of fresh interactions.

cycle.pull -> cycle.validate -> cycle.drift -> cycle.train -> cycle.evaluate -> cycle.gate
(the shared task group in ``recsys_common``). Each task calls one function of
``pipeline.cycle`` and passes small dicts (paths, counts, decisions). The window is
the run's data interval, never ``now()``, so re-running a run redoes the same window;
the ``window_start``/``window_end`` Params replace it, and ``epochs``,
``gate_min_delta``, ``gate_tolerance`` override the settings for one run. Heavy
libraries are imported inside the tasks, never at parse time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import CYCLE_PARAMS, WINDOW_PARAMS, retrain_cycle  # noqa: E402


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"),
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={**CYCLE_PARAMS, **WINDOW_PARAMS},
    tags=["retrain", "scheduled"],
    doc_md=__doc__,
)
def retrain():
    retrain_cycle()


dag = retrain()

if __name__ == "__main__":
    dag.test()
