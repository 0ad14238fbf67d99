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


class TrainSettings(BaseModel):
    """Two-tower model and training loop."""

    embedding_dim: int = Field(32, ge=4)
    epochs: int = Field(16, ge=1, description="Epochs over the history (static plans). On bench/quality.py's validation window, "
        "every user scored, 4, 8 and 16 epochs give NDCG@10 0.307, 0.292 and 0.303: level within noise.")
    batch_size: int = Field(512, ge=8)
    sparse_lr: float = Field(0.05, gt=0, description="Rate of the fused Adagrad of the embedding tables.")
    sparse_optimizer: Literal["adagrad", "rowwise_adagrad"] = Field(
        "adagrad",
        description="Fused optimizer of the embedding tables: 'adagrad' keeps one accumulator per element (TorchRec's "
        "EXACT_ADAGRAD); 'rowwise_adagrad' one per row (EXACT_ROWWISE_ADAGRAD, 1/dim of the state; see bench/README.md).",
    )
    dense_lr: float = Field(0.01, gt=0, description="Adam rate for the dense tower layers.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature on dot-product scores.")
    recency_half_life: float | None = Field(
        None, gt=0, description="Days after which an interaction counts half in an epoch's draw (null: all equal); "
        "calibrate sets it under drift.",
    )
    seed: int = 0
    processes: int = Field(
        1, ge=1, le=64, description="Training processes per node; above 1 (or with nnodes above 1) the train task launches "
        "torchrun (gloo on CPU, NCCL on GPUs).",
    )
    nnodes: int = Field(
        1, ge=1, le=64, description="Machines that train together: each runs torchrun with `processes` processes and meets "
        "the others at the c10d rendezvous (rdzv_endpoint); the train task is one of them (recsys_retrain.train.launch).",
    )
    rdzv_endpoint: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-\[\]:]+:[0-9]+$",
        description="host:port of the c10d rendezvous that the nodes meet at (a port on the first node, reachable from the "
        "others); required when nnodes > 1. Unset with one node: torchrun --standalone picks a free local port.",
    )
    rdzv_id: str = Field(
        "recsys-train", pattern=r"^[A-Za-z0-9_.\-]+$",
        description="The rendezvous' job id: nodes with the same endpoint and id train together.",
    )
    refit: Literal["warm", "scratch", "off"] = Field(
        "warm",
        description="What serves after a promotion (recsys_retrain.train.refit). The gated challenger was trained on data "
        "before the window it was judged on, so it would start serving one to three weeks stale. 'warm': continue from "
        "its weights on the window plus refit_recent_days before it, refit_epochs epochs at refit_rate_scale of the "
        "train section's rates (a fraction of a training's cost, and what serves stays close to what the gate judged); 'scratch': the "
        "gated recipe (its plan's rates and batch size, its epoch count, static, no validation split) on the history "
        "and the window; 'off': the gated challenger serves, as before. A sanity check guards both refits "
        "(gate.refit_tolerance). 'warm' by bench/backtest.py (drift + adaptive on MovieLens-100K, 20 weeks): 'scratch' "
        "served +0.0005 NDCG@10 (95% CI [-0.0009, +0.0019]) for 1.12x the training seconds, 'off' -0.0005 ([-0.0019, "
        "+0.0001]) with the served model 29 days stale on average against warm's 22.",
    )
    refit_epochs: int = Field(2, ge=1, description="Epochs of a warm refit (as schedule.warm_epochs: a short update).")
    refit_rate_scale: float = Field(
        0.25, gt=0, le=1,
        description="A warm refit's rates over the train section's (not the plan's starting rates, which the rate probe may "
        "have raised up to x8 for a run from scratch): its weights sit near a minimum and no optimizer state is kept, "
        "so Adagrad's first steps are large.",
    )
    refit_recent_days: float = Field(
        21.0, ge=0,
        description="Days of history before the window that a warm refit trains on besides the window (0: the window "
        "alone). A week holds few users; a few epochs on them alone would pull the shared tower layers their way.",
    )
    blend_holdout: bool = Field(
        True,
        description="Fit the served score's blend with recent popularity (recsys_retrain.train.blend) on the latest "
        "schedule.validation_share of the history, every user of it, cold ones included; the towers train on the rest, "
        "under the static policy as under the adaptive one. On bench/quality.py's split the towers alone rank the next "
        "weeks worse than recent popularity (validation NDCG@10 0.31 against 0.37); blended, the model matches it. "
        "False: the static policy trains on the whole history and serves the model alone.",
    )

    @model_validator(mode="after")
    def _nodes_meet_somewhere(self) -> TrainSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"train.nnodes={self.nnodes} needs train.rdzv_endpoint (host:port of the first node)")
        return self

    @property
    def launched(self) -> bool:
        """Whether training runs under torchrun (several processes or several nodes) instead of in the task's process."""
        return self.processes > 1 or self.nnodes > 1


class ScheduleSettings(BaseModel):
    """The adaptive hyperparameter scheduler (``recsys_retrain.schedule``): calibration and in-run control."""

    policy: str = Field(
        "adaptive",
        pattern="^(adaptive|static)$",
        description="'adaptive': calibrate from the data and steer by convergence signals; 'static': the train section as is.",
    )
    knowledge_base: bool = Field(True, description="Start from similar past runs (kept in MLflow) when there are any.")
    kb_neighbours: int = Field(3, ge=1, description="Past runs a knowledge-base suggestion averages.")
    kb_probe_rates: list[float] = Field(
        [1.0, 2.0],
        description="Multipliers of the knowledge base's suggested rate that the first epoch of a run started from it "
        "races ([]: start at the suggestion, no probe). Past runs narrow the rate to a factor of two or so, but one "
        "start at their averaged rate is one draw: in bench/scheduler.py 3 of 5 MovieLens warm starts at x5 of the "
        "rules' rates settled in the worse, personalised fit.",
    )
    decay: str = Field("cosine", pattern="^(cosine|linear|none)$", description="Base decay over the epoch budget.")
    decay_floor: float = Field(
        0.01, gt=0, le=1,
        description="Final base-decay multiplier for reference data (raised for sparse or drifted data); near 0, as "
        "CosineAnnealingLR's default, because the weights a run ends on settle best at a small rate.",
    )
    rate_boost: float = Field(1.0, gt=0, description="Starting rates over the train section's, before the data rules.")
    probe_rates: list[float] = Field(
        [1.0, 2.0, 4.0, 8.0],
        description="Rate multipliers the first epoch of a rules-based run tries side by side (an equal share of it each, "
        "from the same weights), keeping the best by validation; [] turns the probe off. Runs started from the knowledge "
        "base race kb_probe_rates instead.",
    )
    probe_tol: float = Field(
        0.15, ge=0, lt=1,
        description="Relative shortfall from the best mean validation within which the probe counts candidates as "
        "tied, in every round, and ranks the higher rate first. Two readings of one candidate half an epoch apart "
        "differ by a median 7% (upper quartile 20%) at NDCG@50 in bench/scheduler.py; at 0.07 noise eliminated x4.",
    )
    probe_z: float | None = Field(
        1.0, ge=0,
        description="In the probe's last round, which picks the run's rate: standard errors of a paired per-user "
        "comparison by which a finalist within probe_tol of the leader must trail it to lose the tie (needs a "
        "validate callback that returns per-user values, as the pipeline's does); null: the tolerance alone.",
    )
    trend_gini: float = Field(0.5, ge=0, le=1, description="Popularity Gini from which dense data counts as strongly trending.")
    trend_boost: float = Field(
        1.0, ge=1,
        description="Extra dense rate for dense, strongly trending data (1: none). Off by default: the rate probe sets "
        "the level, and a dense-only x1.5 moved one MovieLens seed of bench/scheduler.py into a worse fit.",
    )
    reference_density: float = Field(0.03, gt=0, le=1, description="Density at and above which data counts as dense.")
    reference_per_item: float = Field(40.0, gt=0, description="Interactions per item the base embedding rate suits.")
    target_examples: int = Field(800_000, ge=1, description="Examples a run should see; sizes the epoch budget of small windows.")
    min_epochs: int = Field(3, ge=1, description="No early stop before this many epochs.")
    patience: int = Field(3, ge=1, description="Validation cycles without gain that make a plateau.")
    improve_cycles: int = Field(2, ge=1, description="Consecutive improving cycles that count as sustained improvement.")
    plateau_tol: float = Field(0.005, ge=0, description="Relative validation gain below which a cycle is no improvement.")
    rollback_tol: float = Field(0.03, ge=0, description="Relative validation loss after a change that undoes the change.")
    max_change: float = Field(2.0, gt=1, description="Largest multiplicative rate change of one decision.")
    cooldown: int = Field(1, ge=0, description="Validation cycles after a change before the next one.")
    smoothing: float = Field(
        0.5, gt=0, le=1, description="EMA weight of a new validation value in the plateau cues (1: none; metrics are noisy)."
    )
    drift_half_life: float | None = Field(
        None, gt=0, le=1,
        description="Under drift, the share of the training window's span after which an interaction counts half "
        "in an epoch's draw, divided by the drift level (null: no recency weighting; see calibrate).",
    )
    validation_k: int = Field(
        50, ge=1,
        description="Cut-off of the validation NDCG the controller steers by. Deeper than the served K: a validation "
        "window has few users, and NDCG@10 of each reads mostly noise (in bench/scheduler.py validation NDCG@50 "
        "ranked rates as test NDCG@10 did where NDCG@10 could not tell them apart).",
    )
    validation_share: float = Field(
        0.1, gt=0, lt=0.5, description="Latest share of the training history held out to steer the controller."
    )
    warm_start: bool = Field(
        False,
        description="Let calibrate continue from the champion's weights (a short update at a lower rate on recent "
        "days) when drift is at most minor and the catalogue and users barely changed (recsys_retrain.schedule.start); "
        "false: every run trains from scratch. Off, by bench/backtest.py: drift + warm start against drift + adaptive "
        "from scratch is +0.002 NDCG@10 on the drifting synthetic timeline and -0.0001 on MovieLens-100K (both within "
        "noise) for 1.07x and 1.31x the training seconds.",
    )
    warm_max_new_users: float = Field(
        0.2, ge=0, le=1,
        description="Share of the training span's users without a champion row above which a run trains from scratch.",
    )
    warm_max_new_items: float = Field(
        0.1, ge=0, le=1,
        description="Share of the catalogue added since the champion plus the share of the champion's items removed, "
        "above which a run trains from scratch (a changed catalogue).",
    )
    warm_rate_scale: float = Field(
        0.25, gt=0, le=1,
        description="A warm update's starting rates over the calibrated ones, without drift (minor drift: x1.5): "
        "the champion is near a minimum, and its optimizer state is not kept, so Adagrad's first steps are large.",
    )
    warm_epochs: int = Field(2, ge=1, description="A warm update's epoch budget without drift (minor drift: x1.5, rounded up).")
    warm_span_days: float = Field(
        28.0, gt=0,
        description="Days of recent history a warm update trains on; longer when the champion has not seen more days.",
    )


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
    def runs_dir(self) -> Path:
        """One folder per retraining cycle: window, drift report, checkpoint, decision."""
        return self.home / "runs"

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


def feature_store_yaml(repo: Path, deployment: str) -> Path:
    """``repo``'s Feast configuration for ``deployment``: ``feature_store.yaml`` locally, ``feature_store.prod.yaml`` in production.

    Example:
        >>> feature_store_yaml(Path("features"), "production").name
        'feature_store.prod.yaml'
    """
    return Path(repo) / ("feature_store.prod.yaml" if deployment == "production" else "feature_store.yaml")
