"""Scheduled retraining: one cycle per weekly window of fresh interactions.

pull -> validate -> drift -> train -> evaluate -> gate. Each task calls one function
of ``pipeline.cycle`` and passes small dicts (paths, counts, decisions). The window
is the run's data interval, never ``now()``, so re-running a run redoes the same
window. Heavy libraries are imported inside the tasks, never at parse time.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

IO_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"),
    start_date=pendulum.datetime(1997, 9, 22, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["retrain", "scheduled"],
    doc_md=__doc__,
)
def retrain():
    @task(**IO_RETRIES)
    def pull() -> dict:
        from pipeline import cycle

        ctx = get_current_context()
        return cycle.pull(ctx["data_interval_start"].isoformat(), ctx["data_interval_end"].isoformat())

    @task
    def validate(pulled: dict) -> dict:
        from pipeline import cycle

        return cycle.validate(pulled)

    @task
    def drift(pulled: dict) -> dict:
        from pipeline import cycle

        return cycle.drift(pulled)

    @task
    def train(pulled: dict) -> dict:
        from pipeline import cycle

        return cycle.train(pulled)

    @task
    def evaluate(pulled: dict, trained: dict) -> dict:
        from pipeline import cycle

        return cycle.evaluate(pulled, trained)

    @task(**IO_RETRIES)
    def gate(pulled: dict, drift_result: dict, trained: dict, evaluated: dict) -> dict:
        from pipeline import cycle

        return cycle.gate(pulled, drift_result, trained, evaluated)

    validated = validate(pull())
    drifted = drift(validated)
    trained = train(validated)
    drifted >> trained
    gate(validated, drifted, trained, evaluate(validated, trained))


dag = retrain()

if __name__ == "__main__":
    dag.test()
