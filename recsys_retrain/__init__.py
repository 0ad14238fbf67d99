"""Drift-aware retraining pipeline for recommender models.

Stages, one module each: ``data`` (Feast), ``drift`` (Evidently), ``model`` and
``train`` (TorchRec), ``evaluate`` (full-ranking metrics), ``registry`` (MLflow),
``cycle`` (the functions Airflow tasks call) and ``cli``.
"""

__version__ = "0.1.0"


def _before_feast() -> None:
    """Runs once, before any module of the package imports Feast: halves Feast's import time
    (``recsys_retrain.feast_startup``). Nothing is re-exported."""
    from recsys_retrain.feast_startup import skip_feast_instrumentation

    skip_feast_instrumentation()


_before_feast()
