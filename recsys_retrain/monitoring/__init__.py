"""Evidence every DAG run leaves where users already look.

``runs``: one MLflow run per DAG run in the ``<model>-monitoring`` experiment (window,
drift signals with their thresholds, severity, trigger, gate, served quality, monitor),
tagged so that one ``mlflow.search_runs`` returns the timeline. ``workspace``: the local
Evidently workspace, one project per model, one snapshot per drift check, dashboard
panels over the project's calibrated signals. ``served``: the served model's quality
per week beside fresh baselines. ``report``: the timeline page rebuilt from what
production logged (``retrain report``, the monitor DAG's weekly refresh, the demo).

Imports go to the module that defines a name, e.g.
``from recsys_retrain.monitoring.runs import log_run``.
"""
