"""The training and scheduler sections of the settings (``Settings.train``, ``Settings.schedule``).

Kept apart from ``recsys_retrain.settings`` only for size: that module is still the one place
settings are read from and re-exports both classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


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
    id_dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Share of training examples that see their user as unknown (id table row 0; "
        "recsys_retrain.train.examples.dropped_ids), so that a user who arrives after training is ranked from their "
        "profile and history rather than from an untrained row. 0 (never) by default: at 0.1, on synthetic S2 "
        "(bench/scale_train.py --quality) the gated model, which does not know the tail's new users, scored 0.1880 "
        "against 0.1833, but the served refit 0.1942 and 0.1915 against 0.1981 (one run each), and the cycle's "
        "tiny refit test fell short of its sanity check.",
    )
    seed: int = 0
    history_days: int = Field(
        365, ge=1,
        description="Days of history a cycle's pull reads before the window (recsys_retrain.cycle.pull), so that a pull's "
        "cost follows this span, not the log's age. 365 covers all of MovieLens-100K (215 days) and of the one-year "
        "synthetic logs, so their results are those of an unbounded pull.",
    )
    sampled_softmax_above: int = Field(
        5_000, ge=1,
        description="Catalogue size above which a training step scores its positives and sampled_negatives shared "
        "negatives with a logQ correction (recsys_retrain.train.sampled) instead of a full softmax over every item. "
        "On a synthetic log over 10,000 items (bench/scale.py's training child, one epoch, 2 busy cores) the full softmax "
        "ran 2,138 samples/s and the sampled one 6,238, at NDCG@10 0.166 and 0.164; MovieLens-100K (1,682 items) "
        "stays on the full softmax.",
    )
    sampled_negatives: int = Field(4096, ge=1, description="Negatives drawn per step by the sampled softmax.")
    row_wise_above_mb: float | None = Field(
        None, gt=0,
        description="An embedding table whose weights and optimizer state exceed this many MB is split across the ranks "
        "(TorchRec's row_wise on GPUs; column_wise on CPU, where its bag sharder offers no row-wise); smaller tables "
        "stay table_wise (recsys_retrain.train.sharding). None: half of one device's memory as TorchRec's topology "
        "gives it (HBM on GPUs, DDR on CPU).",
    )
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
