"""Typed settings for every stage, in one place.

Values come, highest priority first, from keyword arguments, environment variables
(``RETRAIN_`` prefix, ``__`` between nested names, e.g. ``RETRAIN_TRAIN__EPOCHS=3``),
a YAML file named by ``RETRAIN_CONFIG``, and the defaults below. Thresholds live
here, not in code, so that every decision can name the setting it applied.

Nothing here touches the disk at import time; paths are resolved when used.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from recsys_retrain.training_settings import ScheduleSettings, TrainSettings  # sections kept there for size


class DataSettings(BaseModel):
    """Where interactions come from and how a window is checked."""

    source: Path | None = Field(
        None,
        description="Interaction log (parquet/CSV) or a GroupLens ml-100k folder; "
        "None means MovieLens-100K from the recbole wheel.",
    )
    max_bad_share: float = Field(0.01, ge=0, le=1, description="Window fails above this share of bad rows.")
    future_tolerance_s: int = Field(3600, ge=0, description="Timestamps later than now + this are bad rows.")
    rating_min: float = 0.0
    rating_max: float = 5.0
    online_retries: int = Field(3, ge=1, description="Attempts to materialize into the online store before an ingest fails.")
    online_backoff_s: float = Field(1.0, ge=0, description="First wait between materialization attempts; doubles each time.")


class DriftSettings(BaseModel):
    """Drift tests on designed interaction signals (see recsys_retrain.drift).

    Each signal's threshold is calibrated per check by permuting users between the two
    windows (users, not rows, are the independent units), so that all tested signals
    together raise a false alarm with probability ``alpha``.
    """

    reference_days: int = Field(
        28,
        ge=1,
        description="The reference is this many days before the window. Four weeks: a week of MovieLens-100K holds "
        "40-130 users, too few to tell a drift from who happened to be active (see recsys_retrain.drift).",
    )
    stattest_threshold: float = Field(
        0.0, ge=0, description="Floor on every signal's score: it drifts only above both this and its calibrated threshold."
    )
    minor_share: float = Field(0.2, ge=0, le=1, description="Share of drifted signals for severity 'minor'.")
    major_share: float = Field(0.5, ge=0, le=1, description="Share of drifted signals for severity 'major'.")
    alpha: float = Field(
        0.03, gt=0, lt=1, description="Family-wise false-alarm rate of one check (all signals together); keeps FPR under 0.05."
    )
    permutations: int = Field(1000, ge=20, description="User permutations that calibrate the thresholds.")
    min_users: int = Field(10, ge=2, description="A signal is tested only with at least this many users on each side.")
    max_units: int = Field(2000, ge=10, description="Above this many users a side's users are pooled into this many random groups.")
    user_weight_power: float = Field(
        0.5, ge=0, le=1, description="A user's rows weigh n_rows**-power (0: every row counts alike; 1: every user alike)."
    )
    min_drifted_signals: int = Field(1, ge=1, description="This many drifted signals make severity at least 'minor'.")
    major_ratio: float = Field(2.0, ge=1, description="One signal at this multiple of its threshold makes severity 'major'.")
    top_items: int = Field(20, ge=1, description="top_items_share follows the reference's this many most popular items.")
    rising_min_users: int = Field(5, ge=1, description="rising_item_share: an item surges with at least this many current rows ...")
    rising_factor: float = Field(4.0, gt=1, description="... and at least this multiple of its rows expected from the reference.")
    methods: dict[str, str] = Field(default_factory=dict, description="Per-signal test overrides: jensenshannon, psi or wasserstein.")
    floors: dict[str, float] = Field(default_factory=dict, description="Per-signal score floors (override stattest_threshold).")
    seed: int = Field(0, description="Seed of the permutations (a check is deterministic).")


class ServeSettings(BaseModel):
    """Serving the champion: in-process, over REST and precomputed (``recsys_retrain.serve``)."""

    k: int = Field(10, ge=1, description="Items per user when a request does not say.")
    exclude_seen: bool = Field(
        True,
        description="Leave out items the user already interacted with. Turn off in repeat domains (groceries, "
        "music), where the items already bought are often the best recommendations.",
    )
    publish_active_days: int = Field(
        28, ge=1, description="publish precomputes the top-K of every user active in this many days before it runs."
    )


class EvalSettings(BaseModel):
    k: int = Field(10, ge=1, description="Cut-off for NDCG@K and Recall@K.")


class GateSettings(BaseModel):
    """Promotion rule: the challenger is judged against the champion on the same holdout.

    ``policy`` names the decision rule (``recsys_retrain.gate_policies``); the floor and
    the guardrails hold under every policy. Every decision logs the minimum detectable
    difference (MDE) of the users it rests on, and may pool earlier windows when the
    newest one alone is underpowered (``pool_windows``).
    """

    metric: str = "ndcg_at_10"
    policy: Literal["non_inferiority", "superiority", "fresher_unless_worse"] = Field(
        "non_inferiority",
        description="Decision rule on the paired NDCG@K gain. 'non_inferiority': mean gain >= min_delta and the lower "
        "bound >= -margin; 'superiority': mean gain >= min_delta and the lower bound > 0; 'fresher_unless_worse': the "
        "newer model unless the upper bound < 0 or the mean gain < -margin. 'non_inferiority' is the default by "
        "bench/backtest.py: on the drifting synthetic timeline 'fresher_unless_worse' let stale retrains through and "
        "served 0.047 NDCG@10 less (weekly and drift policies) and 'superiority' up to 0.004 less; on MovieLens-100K "
        "the three are within 0.004.",
    )
    min_delta: float = Field(
        0.001,
        description="Mean per-user NDCG@K gain (challenger - champion) must be >= this; above 0 so that a "
        "retrain reproducing the champion does not replace it.",
    )
    tolerance: float = Field(
        0.005, ge=0, description="Non-inferiority margin: the lower bootstrap bound of the NDCG@K gain must be >= -this."
    )
    margin_mde_fraction: float | None = Field(
        None, gt=0, description="When set, the margin of non-inferiority (and of 'fresher_unless_worse') is this fraction "
        "of the evidence's MDE instead of tolerance, so that it follows the noise of the users at hand.",
    )
    max_margin: float = Field(
        0.02, ge=0, description="Cap on a margin derived from the MDE: an underpowered holdout never excuses a larger "
        "mean drop.",
    )
    n_resamples: int = Field(1000, ge=1000, description="Paired bootstrap resamples of holdout users.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Two-sided confidence level of the bootstrap interval; "
                              "its complement is the level of the MDE.")
    seed: int = Field(0, description="Seed of the bootstrap resampling.")
    power: float = Field(0.8, gt=0, lt=1, description="Power at which the minimum detectable difference is computed.")
    pool_windows: int = Field(
        1, ge=1, description="Most windows pooled into one decision's evidence (1: the newest window alone). Earlier "
        "windows count only where the same champion was scored against a challenger on the same users.",
    )
    pool_above_mde: float = Field(
        0.02, gt=0, description="Pool earlier windows while the evidence's MDE of NDCG@K is above this "
        "(only with pool_windows > 1).",
    )
    min_ndcg: float = Field(0.02, ge=0, description="Absolute floor: a challenger's mean NDCG@K below this never promotes.")
    recall_tolerance: float = Field(0.01, ge=0, description="Guardrail: Recall@K may drop by at most this.")
    coverage_tolerance: float = Field(
        0.05, ge=0, description="Guardrail: catalogue coverage of the top-K lists may drop by at most this share."
    )
    cold_tolerance: float = Field(0.02, ge=0, description="Guardrail: cold-user segment NDCG@K may drop by at most this.")
    longtail_tolerance: float = Field(
        0.02, ge=0, description="Guardrail: long-tail segment NDCG@K may drop by at most this."
    )
    min_segment_users: int = Field(
        20, ge=1, description="A segment guardrail is checked only when both models have this many users in it."
    )
    head_share: float = Field(
        0.5, gt=0, lt=1, description="Head items: the most popular items that make up this share of past interactions; "
        "the rest is the long tail."
    )
    refit_tolerance: float = Field(
        0.05, ge=0, lt=1,
        description="Sanity check of a refit before it serves: its mean NDCG@K on the window it was refit on may fall "
        "short of the gated challenger's by at most this share. In-sample for the refit, so it should be higher; a "
        "shortfall means a broken refit, and the gated challenger serves instead (the reason is recorded).",
    )
    registry_retries: int = Field(4, ge=1, description="Attempts per registry call before giving up.")
    registry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles on each retry.")
    lock_timeout_s: float = Field(60.0, gt=0, description="Longest wait for the registry's alias lock.")
    lock_lease_s: float = Field(120.0, gt=0, description="A lock older than this is stale and may be broken.")


class MonitorSettings(BaseModel):
    """Auto-revert: champion vs previous version on the same fresh window."""

    threshold: float = Field(
        0.01, ge=0, description="A window counts as worse when the champion's mean NDCG@K deficit is >= this ..."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="... and the upper bound of the champion - previous interval is below 0."
    )
    n_resamples: int = Field(1000, ge=1000, description="Paired bootstrap resamples of window users.")
    seed: int = 0
    consecutive: int = Field(2, ge=1, description="Revert after this many consecutive significantly-worse windows.")


class MonitoringSettings(BaseModel):
    """Evidence every DAG run leaves where users look: MLflow runs, the Evidently workspace, the report page."""

    enabled: bool = Field(True, description="Log one MLflow run per DAG run (the record task) and refresh the report.")
    experiment: str | None = Field(
        None, description="MLflow experiment of the monitoring runs; default '<model_name>-monitoring'."
    )
    evidently: bool = Field(True, description="Add each drift check as a snapshot to the local Evidently workspace.")
    workspace: Path | None = Field(None, description="Evidently workspace folder; default <home>/evidently.")
    report_dir: Path | None = Field(None, description="Where the refreshed timeline report goes; default <home>/report.")


class AlertSettings(BaseModel):
    """Structured events (drift at the trigger, a rejected challenger, a revert, a failed task) and where they go."""

    webhook_url: str | None = Field(
        None, description="POST each event as JSON here (e.g. an Alertmanager or Slack bridge); None: file and MLflow only."
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook POST.")
    webhook_attempts: int = Field(3, ge=1, description="Attempts per event before the webhook is given up (logged, never fatal).")
    webhook_backoff_s: float = Field(0.5, ge=0, description="First wait between attempts; doubles each time.")


class StorageSettings(BaseModel):
    """Where the DAG tasks hand each other their files: cycle folders (windows, plan, model files, reports) under one URI.

    Tasks exchange URIs under this root, never a worker's local paths, so that a task may run
    on another machine than the one before it. A ``file://`` root is read and written in
    place (one machine, or a volume every worker mounts at the same path); any other fsspec
    protocol (``s3://bucket/prefix``, ``gs://...``) is staged by ``recsys_retrain.storage``:
    each task copies the cycle folder it needs into a local scratch folder and writes what it
    changed back. MLflow's artifacts are not here: MLflow has its own artifact store.
    """

    uri: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://",
        description="Root URI of the cycle folders (they go to <uri>/runs/<start>-<end>). None: file:// + the "
        "absolute home. s3:// needs apache-airflow-providers-amazon (or s3fs), gs:// apache-airflow-providers-google "
        "(or gcsfs), with credentials; neither is installed here.",
    )
    conn_id: str | None = Field(
        None, description="Airflow connection of the object store (ObjectStoragePath's conn_id); None: the "
        "filesystem's own credentials (environment, instance role).",
    )
    scratch: Path | None = Field(
        None, description="Local folder where a task stages an object store's files (a fresh subfolder per task, "
        "removed after it); default <home>/scratch. Unused for a file:// root.",
    )


class Settings(BaseSettings):
    """All settings of the pipeline.

    Example:
        >>> s = Settings(home="/tmp/rt", train={"epochs": 1})
        >>> s.train.epochs, s.mlflow_uri.startswith("sqlite:///")
        (1, True)
    """

    model_config = SettingsConfigDict(
        env_prefix="RETRAIN_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    deployment: Literal["local", "production"] = Field(
        "local",
        description="Which resources the pipeline uses. 'local': MLflow on SQLite under home, the Feast repository's "
        "feature_store.yaml (parquet offline store, SQLite online store), an Airflow home under home (SQLite). "
        "'production': MLflow at tracking_uri (required), feature_store.prod.yaml (PostgreSQL + Redis), and the "
        "Airflow configuration of the environment.",
    )
    offline_store: Literal["default", "spark", "duckdb"] = Field(
        "default",
        description="The Feast offline store's engine. 'default': the deployment's (parquet files read by pandas "
        "locally, PostgreSQL in production). 'spark': feature_store.spark.yaml, Feast's Spark offline store over the "
        "same parquet files: point-in-time retrieval and the daily statistics views run as Spark SQL "
        "(infra/README.md, 'Feast on Spark'). 'duckdb': feature_store.duckdb.yaml, Feast's DuckDB offline store "
        "over the same parquet files, in the process (the 'duckdb' extra): retrieval goes through Feast's "
        "get_historical_features.",
    )
    home: Path = Field(Path(".retrain"), description="Root of everything the pipeline writes.")
    feature_repo: Path = Field(
        Path("features"),
        description="Feast repository (feature_store.yaml + definitions); seeded from the shipped definitions when "
        "it has none.",
    )
    dags_folder: Path | None = Field(None, description="Airflow DAG folder; None: the DAGs shipped with the package.")
    model_name: str = Field("two_tower", description="Registered model name in MLflow.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default SQLite under home.")
    data_root: Path | None = Field(
        None,
        description="Paths given on the CLI or as DAG Params must resolve inside this folder "
        "(recsys_retrain.paths); default: the folder holding home.",
    )

    data: DataSettings = DataSettings()
    drift: DriftSettings = DriftSettings()
    train: TrainSettings = TrainSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    eval: EvalSettings = EvalSettings()
    gate: GateSettings = GateSettings()
    monitor: MonitorSettings = MonitorSettings()
    serve: ServeSettings = ServeSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    alerts: AlertSettings = AlertSettings()
    storage: StorageSettings = StorageSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("RETRAIN_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _production_names_its_servers(self) -> Settings:
        if self.deployment == "production" and not self.tracking_uri:
            raise ValueError("deployment 'production' needs tracking_uri (RETRAIN_TRACKING_URI): the MLflow server")
        return self

    @property
    def cache_dir(self) -> Path:
        """Downloaded public data (the recbole wheel); safe to delete."""
        return self.home / "cache"

    @property
    def storage_uri(self) -> str:
        """The root URI of the cycle folders (``storage.uri``, default ``file://`` + the absolute home), no trailing /."""
        return (self.storage.uri or f"file://{Path(self.home).absolute()}").rstrip("/")

    @property
    def storage_folder(self) -> Path:
        """The local folder that holds the storage root's files on this worker.

        A ``file://`` root's own path (read and written in place); for an object store, the
        scratch folder its files are staged into (``recsys_retrain.storage``).
        """
        uri = self.storage_uri
        if uri.startswith("file://"):
            return Path(uri.removeprefix("file://") or "/")
        return Path(self.storage.scratch or self.home / "scratch").absolute()

    @property
    def runs_dir(self) -> Path:
        """One folder per retraining cycle: window, drift report, checkpoint, decision (under the storage root)."""
        return self.storage_folder / "runs"

    @property
    def monitoring_experiment(self) -> str:
        """The MLflow experiment of the monitoring runs: one run per DAG run."""
        return self.monitoring.experiment or f"{self.model_name}-monitoring"

    @property
    def evidently_workspace(self) -> Path:
        """The local Evidently workspace (``evidently ui --workspace`` on it)."""
        return self.monitoring.workspace or self.home / "evidently"

    @property
    def report_dir(self) -> Path:
        """Where ``retrain report`` and the monitor DAG write ``report.html``."""
        return self.monitoring.report_dir or self.home / "report"

    @property
    def mlflow_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def feature_store_yaml(repo: Path, deployment: str, offline_store: str = "default") -> Path:
    """``repo``'s Feast configuration: ``feature_store.<engine>.yaml`` for the Spark or DuckDB offline store,
    else the deployment's (``feature_store.yaml`` locally, ``feature_store.prod.yaml`` in production).

    Example:
        >>> feature_store_yaml(Path("features"), "production").name
        'feature_store.prod.yaml'
        >>> feature_store_yaml(Path("features"), "local", "spark").name
        'feature_store.spark.yaml'
        >>> feature_store_yaml(Path("features"), "local", "duckdb").name
        'feature_store.duckdb.yaml'
    """
    if offline_store in ("spark", "duckdb"):
        return Path(repo) / f"feature_store.{offline_store}.yaml"
    return Path(repo) / ("feature_store.prod.yaml" if deployment == "production" else "feature_store.yaml")
