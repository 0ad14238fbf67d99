"""Drift-aware retraining pipeline for recommender models.

Stages, one module each: ``data`` (Feast), ``drift`` (Evidently), ``model`` and
``train`` (TorchRec), ``evaluate`` (full-ranking metrics), ``registry`` (MLflow),
``cycle`` (the functions Airflow tasks call) and ``cli``.
"""

__version__ = "0.1.0"
