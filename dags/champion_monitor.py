"""Champion monitor: after each new window, the auto-revert check and the week's served quality.

newest_window -> pull -> validate -> monitor -> publish, and monitor -> served -> record ->
refresh_report. Scores the ``champion`` and the
``previous`` version on the same fresh window (``recsys_retrain.monitor.check_window``);
after enough consecutive significantly-worse windows it reverts the champion. The
RevertDecision is recorded on the champion's model version and as ``monitor.json``
in the cycle folder; a re-run for the same window changes nothing. ``publish`` brings
the precomputed recommendations in the online store to the champion's: after a revert
it republishes the previous version's lists; otherwise it refreshes the lists of the
recently active users (their history moved; new users get their first list).
``served`` scores the serving champion on the week beside two fresh baselines, ``record``
logs the week's monitoring run in MLflow (and the revert alert), and ``refresh_report``
rebuilds the timeline report from every week production logged (``refresh_report`` Param).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import DEFAULT_ARGS, INTERACTIONS, IO_RETRIES, ONE_XCOM, newest_window, publish, pull, record, validate  # noqa: E402

CYCLE_RECORDS = ("runs/*/*.json", "runs/*/drift/drift.json", "runs/*/model/trace.json")  # what the report reads


@dag(
    schedule=[INTERACTIONS],
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    params={
        "window_end": Param(None, type=["null", "string"], description="End of the week to check (ISO date)."),
        "refresh_report": Param(True, type="boolean", description="Rebuild the timeline report after recording the week."),
    },
    tags=["monitor"],
    doc_md=__doc__,
)
def champion_monitor():
    @task(**ONE_XCOM, **IO_RETRIES)
    def monitor(pulled: dict) -> dict:
        from recsys_retrain import cycle, storage

        decision = storage.step(cycle.monitor, pulled)
        print(decision["reason"])
        return decision

    @task(**ONE_XCOM)
    def served(pulled: dict) -> dict:
        from recsys_retrain import storage
        from recsys_retrain.monitoring.served import served as score

        return storage.step(score, pulled)

    @task(**ONE_XCOM)
    def refresh_report() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from recsys_retrain import cycle, storage

        if not get_current_context()["params"].get("refresh_report", True):
            raise AirflowSkipException("refresh_report is off for this run")
        return storage.step(cycle.refresh_report, reads=CYCLE_RECORDS)

    validated = validate(pull(newest_window()))
    decision = monitor(validated)
    publish(decision)
    decision >> served(validated) >> record(validated) >> refresh_report()


dag = champion_monitor()

if __name__ == "__main__":
    dag.test()
