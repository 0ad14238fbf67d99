"""Ingest a batch of interactions and announce it: updates the ``recsys://interactions`` asset.

ingest: validates and appends the ``events`` file (.parquet/.csv) to the feature
store (bad rows to quarantine, already-stored events skipped, features recomputed,
online store filled). When rows were added, the asset event carries the newest
window, and ``drift_watch`` and ``champion_monitor`` run on it; a batch that adds
nothing is skipped, so it triggers nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

if str(Path(__file__).parent) not in sys.path:  # Airflow puts the dags folder there; plain imports may not
    sys.path.append(str(Path(__file__).parent))
from recsys_common import DEFAULT_ARGS, INTERACTIONS, IO_RETRIES, ONE_XCOM  # noqa: E402


@dag(
    schedule=None,
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    params={"events": Param(type="string", minLength=1, description="Batch file (.parquet/.csv) to append.")},
    tags=["ingest"],
    doc_md=__doc__,
)
def ingest():
    @task(outlets=[INTERACTIONS], **ONE_XCOM, **IO_RETRIES)
    def ingest_events() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from recsys_retrain import cycle

        ctx = get_current_context()
        result = cycle.ingest(ctx["params"]["events"])
        if not result["added"]:
            raise AirflowSkipException(f"{result['rows']} rows, none new: nothing to announce")
        ctx["outlet_events"][INTERACTIONS].extra = {"window_start": result["window_start"], "window_end": result["window_end"]}
        return result

    ingest_events()


dag = ingest()

if __name__ == "__main__":
    dag.test()
