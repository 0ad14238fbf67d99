"""The one asset every DAG agrees on: the interaction log in the feature store.

``ingest`` declares it as an outlet (with the newest window in the event's extra);
``drift_watch`` and ``champion_monitor`` are scheduled on it.
"""

from __future__ import annotations

from airflow.sdk import Asset

INTERACTIONS = Asset(uri="recsys://interactions", name="interactions", group="recsys")
