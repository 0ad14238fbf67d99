"""Champion monitor: after each new window, the auto-revert check.

newest_window -> pull -> validate -> monitor -> publish. Scores the ``champion`` and the
``previous`` version on the same fresh window (``recsys_retrain.monitor.check_window``);
after enough consecutive significantly-worse windows it reverts the champion. The
RevertDecision is recorded on the champion's model version and as ``monitor.json``
in the cycle folder; a re-run for the same window changes nothing. ``publish`` brings
the precomputed recommendations in the online store to the champion's: after a revert
it republishes the previous version's lists; otherwise it refreshes the lists of the
recently active users (their history moved; new users get their first list).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import DEFAULT_ARGS, INTERACTIONS, IO_RETRIES, newest_window, publish, pull, validate  # noqa: E402


@dag(
    schedule=[INTERACTIONS],
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    params={"window_end": Param(None, type=["null", "string"], description="End of the week to check (ISO date).")},
    tags=["monitor"],
    doc_md=__doc__,
)
def champion_monitor():
    @task(**IO_RETRIES)
    def monitor(pulled: dict) -> dict:
        from recsys_retrain import cycle

        decision = cycle.monitor(pulled)
        print(decision["reason"])
        return decision

    publish(monitor(validate(pull(newest_window()))))


dag = champion_monitor()

if __name__ == "__main__":
    dag.test()
