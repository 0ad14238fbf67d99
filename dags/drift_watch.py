"""Drift-triggered retraining: runs when ingest updates the interactions asset.

newest_window -> cycle.pull -> cycle.validate -> cycle.drift -> cycle.should_retrain -> cycle.calibrate
-> cycle.train -> cycle.evaluate -> cycle.gate -> cycle.promote_or_keep -> cycle.refit -> cycle.promote
| cycle.keep -> cycle.decided. The shared retrain body with a
short-circuit after the drift check: below the ``retrain_on`` severity the verdict is
recorded (``trigger.json`` and the drift report in the cycle folder) and the run stops;
otherwise the challenger is trained, judged and gated like a scheduled cycle.
The window is the week named by the ``window_end`` Param or the triggering asset
event, else the newest stored week.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import CYCLE_PARAMS, DEFAULT_ARGS, INTERACTIONS, TRIGGER_PARAMS, newest_window, retrain_cycle  # noqa: E402


@dag(
    schedule=[INTERACTIONS],
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    params={
        **TRIGGER_PARAMS,
        "window_end": Param(None, type=["null", "string"], description="End of the week to check (ISO date)."),
        **CYCLE_PARAMS,
    },
    tags=["retrain", "drift"],
    doc_md=__doc__,
)
def drift_watch():
    retrain_cycle(newest_window(), drift_triggered=True)


dag = drift_watch()

if __name__ == "__main__":
    dag.test()
