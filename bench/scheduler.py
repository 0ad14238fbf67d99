"""Scheduler benchmark: the adaptive scheduler against library schedules and a grid search, at equal treatment.

Protocol: the quality protocol of bench/quality.py (MovieLens-100K, global temporal split at
the 80% quantile for test, validation carved from the end of training at the 87.5% quantile of
the training part). Every run trains on the fit part and is validated each epoch on the
validation part (the only signal a schedule may read: NDCG at the steering cut-off
``ScheduleSettings.validation_k``, 50, per user, so that the rate probe can pair its candidates
user by user); each epoch is also scored on the test part (NDCG@10, never read by a decision),
ranking the whole catalogue with every item the user met in the fit and validation parts masked.
Every run, whatever its method, is scored by the test NDCG@10 of its best-validated epoch: the
weights a grid search would keep, as the adaptive scheduler keeps its own (``ndcg10``; the last
epoch's and the kept checkpoint's scores are kept beside it as ``ndcg10_last``, ``ndcg10_kept``).

Regimes: ``movielens`` (as is), ``sparse`` (half the fit interactions removed at random),
``drifted`` (from the 60% time quantile on, half the users swap their most- and least-watched
genres: the drift sandbox's taste change, so the latest training data, validation and test live
in the new regime).

Methods: ``adaptive`` (calibrate from the fit part's profile + AdaptiveScheduler, no knowledge
base, as the pipeline runs it; its first epoch is the rate probe, racing x1, x2, x4 and x8 of the
rules' rates, whose candidates' validations are not counted as epochs), ``constant``, ``cosine``
(CosineAnnealingLR over the budget), ``onecycle`` (OneCycleLR with the base rates as max_lr) and
``plateau`` (ReduceLROnPlateau on validation NDCG with patience ``PLATEAU_PATIENCE``: its default
10 never fires in a 10-epoch budget), each at the train section's rates; a grid of 5 rate
multipliers spanning the probe's (x0.5 .. x8) x 3 schedules (constant, cosine, step).

The goal: adaptive (one run per seed) against the grid configuration **picked by validation**
(the best mean best-validation NDCG over the main seeds, ``grid_val_picked_config``), both run on
``HELDOUT`` held-out seeds the pick never saw, paired seed by seed: ``grid_val_picked_ratio`` (mean
over mean) with its paired-bootstrap 95% CI (``ci95``), goal >= ``GOAL_RATIO`` in every regime; a
miss by less than the CI's half-width is reported as within noise. The grid best picked by
test on the main seeds (``grid_best_ndcg10``, the top of 15 noisy means on the seeds it is scored
on, so biased up) is reported beside it, not as the goal. ``epochs_to_95``: compute epochs (passes
over the fit part, the rate-probe candidates included) by the first epoch whose test NDCG@10
reaches 95% of the grid best; a run that never does counts as budget + 1, a lower bound.

Seeds: the main seeds (``--seeds``, 3) run every method and grid configuration and pick the
configuration; the held-out seeds (``--heldout``, 10) run adaptive and the picked configuration.
``validation_test_corr`` says how far validation tracks test over every epoch of the grid's runs.
Ablations run on seed 0 of ``movielens``; knowledge-base warm starts on every main seed.

The adaptive runs have no resource controller, as in the pipeline's cycle: it answers a slowdown
of the machine by changing the batch size, which made earlier runs of this benchmark depend on
the load of the machine they ran on. Runs go to two worker processes with one thread each;
finished runs are appended to ``bench/results/scheduler_runs.jsonl`` so an interrupted benchmark
resumes (``--fresh`` starts over).

Writes bench/results/scheduler.json and bench/results/scheduler.png.

``--smoke``: ``smoke_tasks`` only (one regime, one seed, ``SMOKE_EPOCHS`` epochs: adaptive,
one library default and one grid configuration), no ablations or held-out seeds; its runs
file, summary and plot go to ``--out`` or a temporary folder, never bench/results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.quality, imported by the worker processes

RESULTS = ROOT / "bench" / "results"
RUNS = RESULTS / "scheduler_runs.jsonl"
REGIMES = ("movielens", "sparse", "drifted")
DEFAULTS = ("constant", "cosine", "onecycle", "plateau")
GRID_RATES = (0.5, 1.0, 2.0, 4.0, 8.0)  # the rate probe races x1 .. x8 (ScheduleSettings.probe_rates)
GRID_SCHEDULES = ("constant", "cosine", "step")
ABLATIONS = ("calibration", "probe", "curvature", "weight_decay", "rollback", "knowledge_base")
SEEDS = (0, 1, 2)  # the main seeds pick the grid configuration; the goal is read on HELDOUT more
HELDOUT = 10
PLATEAU_PATIENCE = 2  # ReduceLROnPlateau's default 10 never fires in a 10-epoch budget; 2 lets it cut up to three times
ABLATION_REGIME = "movielens"
EPOCHS = 10
SMOKE_EPOCHS = 2
GOAL_RATIO = 0.99  # adaptive over the grid configuration picked by validation, on the held-out seeds
BOOTSTRAP_RESAMPLES = 10_000


@cache
def regime_data(regime: str):
    """(fit, validation, test, catalogue) of a regime; seeded, so every worker builds the same."""
    import numpy as np

    from bench.quality import frames, temporal_split

    inter, catalogue = frames()
    if regime == "drifted":
        inter = drifted(inter, catalogue)
    train_all, test = temporal_split(inter, 0.8)
    fit, val = temporal_split(train_all, 0.875)
    if regime == "sparse":
        keep = np.random.default_rng(0).random(len(fit)) >= 0.5
        fit = fit[keep]
        val = val[val["user_id"].isin(fit["user_id"]) & val["item_id"].isin(fit["item_id"])]
        test = test[test["user_id"].isin(fit["user_id"]) & test["item_id"].isin(fit["item_id"])]
    return fit.reset_index(drop=True), val, test, catalogue


def drifted(inter, catalogue):
    """Taste change (drift sandbox, half the users) on every interaction from the 60% time quantile on."""
    import pandas as pd

    from recsys_retrain import simulate

    cut = inter["timestamp"].quantile(0.6)
    log = inter.merge(catalogue, on="item_id", how="left")
    before, after = log[log["timestamp"] < cut], log[log["timestamp"] >= cut]
    items = simulate.catalogue(log)
    after = simulate.inject(after, [simulate.taste_change(0.5)], seed=0, items=items)
    out = pd.concat([before, after], ignore_index=True).sort_values("timestamp", kind="stable")
    return out[inter.columns].reset_index(drop=True)


class TorchSchedule:
    """A torch.optim.lr_scheduler on the trainer's combined optimizer, stepped per step or per epoch."""

    def __init__(self, kind: str, steps_per_epoch: int, epochs: int = EPOCHS):
        self.kind, self.steps_per_epoch, self.epochs, self.sched = kind, steps_per_epoch, epochs, None

    def on_train_begin(self, optimizer):
        import torch.optim.lr_scheduler as lrs

        total = self.steps_per_epoch * self.epochs
        base = [g["lr"] for g in optimizer.param_groups]
        self.sched = {
            "constant": lambda: None,
            "cosine": lambda: lrs.CosineAnnealingLR(optimizer, T_max=total),
            "step": lambda: lrs.StepLR(optimizer, step_size=int(total * 2 / 3), gamma=0.1),
            # The fused row-wise Adagrad has no momentum to cycle; everything else is OneCycleLR's default.
            "onecycle": lambda: lrs.OneCycleLR(optimizer, max_lr=base, total_steps=total + 1, cycle_momentum=False),
            "plateau": lambda: lrs.ReduceLROnPlateau(optimizer, mode="max", patience=PLATEAU_PATIENCE),
        }[self.kind]()

    def on_step(self, signals, optimizer):
        if self.sched is None or self.kind == "plateau":
            return
        if self.kind == "onecycle" and self.sched.last_epoch + 1 >= self.sched.total_steps:
            return  # an epoch may hold a batch more than len(fit) / batch_size (batches split by period): stay at the end
        self.sched.step()

    def on_epoch_end(self, signals, optimizer):
        if self.kind == "plateau" and signals.validation is not None:
            self.sched.step(signals.validation)


def run(task: dict) -> dict:
    """One training run; returns per-epoch validation/test NDCG@10 and costs."""
    import torch

    torch.set_num_threads(1)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import pandas as pd

    from recsys_retrain.evaluate import evaluate, user_metrics
    from recsys_retrain.profile import profile
    from recsys_retrain.schedule.calibrate import calibrate
    from recsys_retrain.schedule.knowledge import KnowledgeBase, Record, features
    from recsys_retrain.schedule.plan import SchedulePlan
    from recsys_retrain.schedule.rules import Components
    from recsys_retrain.settings import ScheduleSettings, TrainSettings
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.loop import train

    fit, val, test, catalogue = regime_data(task["regime"])
    seen = pd.concat([fit, val], ignore_index=True)  # what a user met before the test period: masked in its ranking
    epochs = task.get("max_epochs", EPOCHS)  # only smoke tasks carry it: a normal run's key stays as it was
    base = TrainSettings(seed=task["seed"], epochs=epochs)
    curve: list[tuple[float, float]] = []

    steer_k = ScheduleSettings().validation_k  # the signal every schedule that reads validation gets

    def validate(model):
        """Per-user validation NDCG (the rate probe pairs candidates by user); the curve keeps means."""
        v = user_metrics(model, fit, val, steer_k)
        curve.append((v.mean_ndcg, evaluate(model, seen, test).ndcg))
        return v.ndcg

    plan, callbacks, components = None, [], Components()
    method, off = task["method"], task.get("off")
    settings = base
    if method in ("adaptive", "ablation", "kb_warm"):
        prof = profile(fit).to_dict()
        drift = {"severity": "minor", "drifted_share": 0.3} if task["regime"] == "drifted" else None
        kb = None
        if method == "kb_warm":
            kb = KnowledgeBase([Record.from_dict(r) for r in task["kb"]])
        plan = calibrate(prof, drift, kb, ScheduleSettings(), base)
        if off == "calibration":
            plan = SchedulePlan(dense_lr=base.dense_lr, sparse_lr=base.sparse_lr, batch_size=base.batch_size,
                                max_epochs=epochs, smoothing=ScheduleSettings().smoothing, patience=ScheduleSettings().patience)
        if off == "probe":
            plan = replace(plan, probe_rates=())
        if off in ("curvature", "weight_decay", "rollback"):
            components = replace(components, **{off: False})
        task_features = features(prof, 0.3 if drift else 0.0)
    else:
        rate = task.get("rate", 1.0)
        settings = base.model_copy(update={"dense_lr": base.dense_lr * rate, "sparse_lr": base.sparse_lr * rate})
        steps = math.ceil(len(fit) / base.batch_size)
        callbacks = [TorchSchedule(task["schedule"], steps, epochs)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(fit, catalogue, Path(tmp), settings, progress=False, callbacks=callbacks,
                       validate=validate, plan=plan, components=components)
        seconds = time.perf_counter() - started
        del curve[: result.probe_validations]  # the first epoch's rate probe: its epoch-end value follows
        kept = evaluate(load_checkpoint(Path(result.checkpoint)), seen, test).ndcg
        trace = json.loads(Path(result.trace).read_text())
    out = {
        **{k: v for k, v in task.items() if k != "kb"},
        # every method scored alike: the test NDCG@10 of its best-validated epoch (validation NDCG at steer_k)
        "ndcg10": best_validated(curve),
        "ndcg10_last": curve[-1][1],
        "ndcg10_kept": kept,  # the weights the run ends with (adaptive: those it kept; others: the last epoch's)
        "epochs": len(result.epoch_losses),
        "val_curve": [v for v, _ in curve],
        "test_curve": [t for _, t in curve],
        "compute_epochs": [n / result.n_samples for n in result.epoch_samples],
        "train_s": seconds,
        "step_s": result.step_seconds,
        "scheduler_s": result.scheduler_seconds,
        "events": len(trace["events"]),
    }
    if method == "kb_warm":
        out["kb_digest"] = kb_digest(task["kb"])
    if plan is not None:
        from recsys_retrain.schedule.knowledge import explore_rates

        dense, sparse = explore_rates(trace) or (plan.dense_lr, plan.sparse_lr)
        out["plan"] = {k: v for k, v in plan.to_dict().items() if k != "reasons"}
        out["record"] = Record(task_features, dense, sparse, best_epoch=int(result.best_epoch or out["epochs"]),
                               epochs=out["epochs"], validation=float(result.best_validation or 0.0),
                               regime=task["regime"]).to_dict()
        out["event_log"] = [{k: e[k] for k in ("epoch", "stage", "action", "trigger")} for e in trace["events"]]
        out["probe"] = next((e["reason"] for e in trace["events"] if e["action"] == "lr_probe"), None)
    return out


def best_validated(curve: list[tuple[float, float]]) -> float:
    """Test NDCG@10 at the epoch of best validation in ``curve`` ((validation, test) per epoch; first on ties).

    The score of every run, whatever its method: a grid search keeps its best-validated weights as
    the adaptive scheduler keeps its own, so neither is scored at an epoch the other would not keep.
    """
    return max(curve, key=lambda vt: vt[0])[1]


def key(task: dict) -> str:
    return json.dumps({k: v for k, v in task.items() if k != "kb"}, sort_keys=True)


def tasks_main(seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    """Every method and grid configuration on each seed; the ablations on seed 0 of one regime."""
    tasks = []
    for regime in REGIMES:
        for seed in seeds:
            tasks.append({"regime": regime, "method": "adaptive", "seed": seed})
            tasks.append({"regime": regime, "method": "default", "schedule": "plateau", "seed": seed})
            tasks.append({"regime": regime, "method": "default", "schedule": "onecycle", "seed": seed})
            for rate in GRID_RATES:
                for kind in GRID_SCHEDULES:
                    tasks.append({"regime": regime, "method": "grid", "schedule": kind, "rate": rate, "seed": seed})
    for off in ABLATIONS:
        if off != "knowledge_base":
            tasks.append({"regime": ABLATION_REGIME, "method": "ablation", "off": off, "seed": 0})
    return tasks


def smoke_tasks() -> list[dict]:
    """The smoke run: adaptive, plateau and the grid's constant x1 on seed 0 of ``movielens``, ``SMOKE_EPOCHS`` each."""
    keep = ({"method": "adaptive"}, {"method": "default", "schedule": "plateau"},
            {"method": "grid", "schedule": "constant", "rate": 1.0})
    return [{**t, "max_epochs": SMOKE_EPOCHS} for t in tasks_main((0,))
            if t["regime"] == "movielens" and any(all(t.get(k) == v for k, v in want.items()) for want in keep)]


def best_config(runs: list[dict], regime: str) -> tuple[str, float] | None:
    """The grid configuration (schedule, rate) with the best mean test NDCG@10 over ``runs`` of ``regime``."""
    means: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        if r["regime"] == regime and r["method"] == "grid":
            means.setdefault((r["schedule"], r["rate"]), []).append(r["ndcg10"])
    return max(means, key=lambda c: statistics.mean(means[c])) if means else None


def val_picked_config(runs: list[dict], regime: str) -> tuple[str, float] | None:
    """The grid configuration (schedule, rate) a grid search that may not see test picks: the best mean,
    over ``runs`` of ``regime``, of each run's best validation NDCG (the epoch it is scored at)."""
    means: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        if r["regime"] == regime and r["method"] == "grid":
            means.setdefault((r["schedule"], r["rate"]), []).append(max(r["val_curve"]))
    return max(means, key=lambda c: statistics.mean(means[c])) if means else None


def tasks_heldout(done: dict[str, dict], regimes: list[str], seeds: tuple[int, ...]) -> list[dict]:
    """Adaptive and the grid configuration picked by validation on the main seeds (``done``), on the held-out ``seeds``."""
    tasks = []
    for regime in regimes:
        config = val_picked_config(list(done.values()), regime)
        if config is None:
            continue
        for seed in seeds:
            tasks.append({"regime": regime, "method": "adaptive", "seed": seed})
            tasks.append({"regime": regime, "method": "grid", "schedule": config[0], "rate": config[1], "seed": seed})
    return tasks


def summarise_heldout(done: dict[str, dict], held: dict[str, dict], margin: float = GOAL_RATIO) -> dict:
    """Per regime: adaptive against the grid configuration picked by validation on the main seeds, both on
    the held-out seeds, paired seed by seed.

    ``ratio``: mean adaptive NDCG@10 over the picked configuration's; ``ci95``: its 95% interval from a
    paired bootstrap over the seeds (BCa, scipy.stats.bootstrap), beside the mean paired difference and
    its interval. The goal (``ratio >= margin``) is read with the interval: a miss by less than the
    interval's half-width is ``within_noise``.
    """
    import numpy as np
    from scipy.stats import bootstrap

    out = {}
    for regime in REGIMES:
        config = val_picked_config(list(done.values()), regime)
        mine = [r for r in held.values() if r["regime"] == regime]
        adaptive = {r["seed"]: r["ndcg10"] for r in mine if r["method"] == "adaptive"}
        fixed = {r["seed"]: r["ndcg10"] for r in mine
                 if config and r["method"] == "grid" and (r["schedule"], r["rate"]) == config}
        seeds = sorted(set(adaptive) & set(fixed))
        if not seeds:
            continue
        a, g = np.array([adaptive[s] for s in seeds]), np.array([fixed[s] for s in seeds])
        ratio = float(a.mean() / g.mean())
        ci = diff_ci = None
        if len(seeds) >= 3:
            kw = {"paired": True, "confidence_level": 0.95, "n_resamples": BOOTSTRAP_RESAMPLES,
                  "random_state": np.random.default_rng(0), "vectorized": True, "axis": -1}
            r = bootstrap((a, g), lambda x, y, axis: x.mean(axis=axis) / y.mean(axis=axis), **kw)
            d = bootstrap((a, g), lambda x, y, axis: (x - y).mean(axis=axis), **kw)
            ci = [float(r.confidence_interval.low), float(r.confidence_interval.high)]
            diff_ci = [float(d.confidence_interval.low), float(d.confidence_interval.high)]
        passed = ratio >= margin
        out[regime] = {
            "seeds": seeds, "grid_config": list(config), "adaptive_ndcg10": float(a.mean()),
            "grid_config_ndcg10": float(g.mean()), "ratio": ratio, "ci95": ci,
            "diff": float((a - g).mean()), "diff_ci95": diff_ci, "adaptive_wins": int((a > g).sum()),
            "goal": f"ratio >= {margin}", "passed": passed,
            "within_noise": (not passed) and ci is not None and margin - ratio < (ci[1] - ci[0]) / 2,
            "adaptive_runs": {s: adaptive[s] for s in seeds}, "grid_config_runs": {s: fixed[s] for s in seeds},
        }
    return out


def execute(tasks: list[dict], workers: int, done: dict[str, dict]) -> None:
    from tqdm import tqdm

    todo = [t for t in tasks if key(t) not in done]
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=workers) as pool, RUNS.open("a") as log:
        futures = {pool.submit(run, t): t for t in todo}
        failed = []
        for fut in tqdm(as_completed(futures), total=len(futures), desc="scheduler bench runs"):
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001  one broken run must not throw away the others (the pool would drain them)
                failed.append(f"{key(futures[fut])}: {type(exc).__name__}: {exc}")
                print(f"run failed: {failed[-1]}", file=sys.stderr, flush=True)
                continue
            done[key(futures[fut])] = res
            log.write(json.dumps(res) + "\n")
            log.flush()
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; the others are kept in {RUNS.name}: " + "; ".join(failed))


def compute_epochs(r: dict) -> list[float]:
    """Passes over the fit part by each epoch's end, rate-probe candidates included (static runs: 1, 2, ...)."""
    return r.get("compute_epochs") or [float(i + 1) for i in range(len(r["test_curve"]))]


def summarise(done: dict[str, dict]) -> dict:
    runs = list(done.values())
    out: dict = {"regimes": {}, "protocol": __doc__.split("\n\n")[1].replace("\n", " ")}
    overheads = []
    censored_at = float(EPOCHS + 1)
    for regime in REGIMES:
        mine = [r for r in runs if r["regime"] == regime]
        grid_runs = [r for r in mine if r["method"] == "grid"]
        configs = sorted({(r["schedule"], r["rate"]) for r in grid_runs}, key=lambda c: (c[1], c[0]))
        grid = {c: [r for r in grid_runs if (r["schedule"], r["rate"]) == c] for c in configs}
        if not grid or not any(r["method"] == "adaptive" for r in mine):
            out["regimes"][regime] = {"missing": "not run (the benchmark was stopped before this regime)"}
            continue
        grid_mean = {c: statistics.mean(r["ndcg10"] for r in rs) for c, rs in grid.items()}
        picked = best_config(grid_runs, regime)
        grid_best = grid_mean[picked]
        target = 0.95 * grid_best

        def to95(r, target=target):
            """Compute epochs (probe passes included) by the first epoch whose test NDCG@10 reaches the target."""
            return next((c for c, t in zip(compute_epochs(r), r["test_curve"]) if t >= target), None)

        def entry(rs):
            if not rs:
                return None
            reached = [to95(r) for r in rs]
            return {
                "ndcg10": statistics.mean(r["ndcg10"] for r in rs),
                "ndcg10_std": statistics.pstdev(r["ndcg10"] for r in rs),
                # a run that never reaches the target counts as budget + 1 (a lower bound of its true value)
                "epochs_to_95": statistics.mean(censored_at if x is None else x for x in reached)
                if any(x is not None for x in reached) else None,
                "epochs_to_95_runs": reached,
                "epochs": statistics.mean(r["epochs"] for r in rs),
                "compute_epochs": statistics.mean(compute_epochs(r)[-1] for r in rs),
                "train_s": statistics.mean(r["train_s"] for r in rs),
                "seeds": len(rs),
            }

        # best validation NDCG@50 of each run (the epoch it is scored at): what a grid search that may not see
        # test picks by
        grid_val = {c: statistics.mean(max(r["val_curve"]) for r in rs) for c, rs in grid.items()}
        val_picked = val_picked_config(grid_runs, regime)
        reg = {"grid_best_ndcg10": grid_best, "grid_best_config": list(picked),
               "grid_best_seeds": len(grid[picked]),
               "grid_best_single_run": max(r["ndcg10"] for r in grid_runs),
               "grid_val_picked_config": list(val_picked), "grid_val_picked_ndcg10": grid_mean[val_picked],
               "grid_total_epochs": sum(r["epochs"] for r in grid_runs), "grid_configs_run": len(grid),
               "grid": {f"{s}@x{rate}": grid_mean[(s, rate)] for s, rate in configs},
               "grid_validation": {f"{s}@x{rate}": grid_val[(s, rate)] for s, rate in configs},
               "validation_test_corr": {"grid": agreement(grid_runs), "grid_best_config": agreement(grid[picked])}}
        adaptive = sorted((r for r in mine if r["method"] == "adaptive"), key=lambda r: r["seed"])
        reg["adaptive"] = entry(adaptive)
        reg["adaptive_runs"] = {r["seed"]: r["ndcg10"] for r in adaptive}
        reg["grid_best_runs"] = {r["seed"]: r["ndcg10"] for r in sorted(grid[picked], key=lambda r: r["seed"])}
        overheads += [r["scheduler_s"] / r["step_s"] for r in adaptive if r["step_s"] > 0]
        for kind in DEFAULTS:
            rs = [r for r in mine if r["method"] == "default" and r["schedule"] == kind]
            if kind in ("constant", "cosine") and (kind, 1.0) in grid:
                rs += grid[(kind, 1.0)]
            reg[kind] = entry(rs)
        reg["ablations"] = {
            r["off"]: {"ndcg10": r["ndcg10"], "epochs": r["epochs"], "epochs_to_95": to95(r)}
            for r in mine if r["method"] == "ablation"
        }
        adaptive0 = next((r for r in adaptive if r["seed"] == 0), adaptive[0])
        if reg["ablations"]:
            reg["ablations"]["none (all on, seed 0)"] = {"ndcg10": adaptive0["ndcg10"], "epochs": adaptive0["epochs"],
                                                         "epochs_to_95": to95(adaptive0)}
        warm = {r["seed"]: r for r in mine if r["method"] == "kb_warm"}
        if warm:
            first = warm[min(warm)]
            reg["ablations"]["knowledge_base (warm start)"] = {"ndcg10": first["ndcg10"], "epochs": first["epochs"],
                                                             "epochs_to_95": to95(first)}
            cold = {r["seed"]: r for r in adaptive}
            seeds = sorted(set(warm) & set(cold))
            reg["kb_warm"] = entry([warm[s] for s in seeds])
            reg["kb_warm_runs"] = {s: warm[s]["ndcg10"] for s in seeds}
            reg["kb_warm_epochs_to_95_runs"] = {s: to95(warm[s]) for s in seeds}
            reg["kb_cold_epochs_to_95_runs"] = {s: to95(cold[s]) for s in seeds}
        a, p = reg["adaptive"], reg["plateau"]
        p95 = (p["epochs_to_95"] or censored_at) if p else None
        reg["goals"] = {
            # main seeds, read beside the held-out goal (finish() adds it): the grid best is picked by test on the
            # seeds it is scored on, the top of 15 noisy means, so this ratio is biased against adaptive
            "ndcg_vs_grid_best": a["ndcg10"] / grid_best,
            "ndcg_vs_grid_val_picked": a["ndcg10"] / grid_mean[val_picked],
            "grid_val_picked_vs_grid_best": grid_mean[val_picked] / grid_best,
            "beats_every_default": all(a["ndcg10"] >= reg[k]["ndcg10"] for k in DEFAULTS if reg[k] is not None),
            "defaults_run": [k for k in DEFAULTS if reg[k] is not None],
            "epochs_to_95_vs_plateau": (a["epochs_to_95"] / p95) if p95 and a["epochs_to_95"] else None,
            "plateau_never_reached_95": bool(p) and p["epochs_to_95"] is None,
        }
        out["regimes"][regime] = reg
    out["overhead"] = statistics.mean(overheads) if overheads else None
    # Every regime and seed where the warm or the cold start reached 95%; one that never did counts as budget + 1,
    # on either side, so a warm start that fails weighs against the knowledge base as a failed cold one weighs for it.
    pairs = [(w or censored_at, r["kb_cold_epochs_to_95_runs"][seed] or censored_at)
             for r in out["regimes"].values() if "kb_warm_epochs_to_95_runs" in r
             for seed, w in r["kb_warm_epochs_to_95_runs"].items() if w or r["kb_cold_epochs_to_95_runs"][seed]]
    out["kb_warm_vs_cold_epochs_ratio"] = (sum(w for w, _ in pairs) / sum(c for _, c in pairs)) if pairs else None
    out["kb_pairs_compared"] = len(pairs)
    return out


def agreement(runs: list[dict]) -> float | None:
    """Pearson correlation of validation NDCG@50 with test NDCG@10 over every epoch of ``runs``.

    How well the steering signal tells better models from worse ones: over the whole grid it
    mostly separates the rates; within one configuration's runs it is what choosing an epoch, or a
    rate change late in a run, by validation can rely on. None for fewer than three epochs or a
    flat curve.
    """
    pairs = [(v, t) for r in runs for v, t in zip(r["val_curve"], r["test_curve"])]
    val, test = zip(*pairs) if pairs else ((), ())
    if len(pairs) < 3 or min(val) == max(val) or min(test) == max(test):
        return None
    return statistics.correlation(val, test)


def plot(summary: dict, done: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGIMES), figsize=(5 * len(REGIMES), 3.6), sharey=True)
    for ax, regime in zip(axes, REGIMES):
        if "missing" in summary["regimes"][regime]:
            ax.set_title(f"{regime} (not run)")
            continue
        for method, kind, style in (("adaptive", None, "-"), *(("default", k, "--") for k in DEFAULTS)):
            rs = [r for r in done.values() if r["regime"] == regime and r["seed"] == 0 and r["method"] in (method, "grid")
                  and (kind is None or (r.get("schedule") == kind and r.get("rate", 1.0) == 1.0))]
            rs = [r for r in rs if (r["method"] == "adaptive") == (method == "adaptive")]
            if rs:
                ax.plot(compute_epochs(rs[0]), rs[0]["test_curve"], style, label=kind or "adaptive")
        ax.axhline(0.95 * summary["regimes"][regime]["grid_best_ndcg10"], color="grey", lw=0.8, ls=":",
                   label="95% of grid best")
        ax.set_title(regime)
        ax.set_xlabel("passes over the data (adaptive: rate probe included)")
    axes[0].set_ylabel("test NDCG@10 (seed 0)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="forget finished runs and start over")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES), help="regimes to run")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablation and knowledge-base runs")
    parser.add_argument("--summarise-only", action="store_true", help="write the summary of the runs finished so far")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help=f"seeds 0..N-1 (default {len(SEEDS)})")
    parser.add_argument("--heldout", type=int, default=HELDOUT,
                        help="held-out seeds after the main ones for adaptive and the picked grid configuration (0: none)")
    parser.add_argument("--smoke", action="store_true", help="a few short runs of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for scheduler.json, scheduler.png and the runs "
                        "file (default bench/results; with --smoke a temporary folder)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.heldout < 0:
        parser.error(f"--heldout must be 0 or more, got {args.heldout}")
    seeds = tuple(range(args.seeds))
    heldout = tuple(range(args.seeds, args.seeds + args.heldout))
    if args.smoke:
        seeds, heldout = (0,), ()
    global RESULTS, RUNS  # execute() and finish() write where these point (the tests point them elsewhere too)
    if args.out or args.smoke:
        RESULTS = args.out or Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
        RUNS = RESULTS / RUNS.name
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        RUNS.unlink(missing_ok=True)
    done, held = {}, {}
    if RUNS.exists():
        for line in RUNS.read_text().splitlines():
            r = json.loads(line)
            into = done if r["seed"] in seeds else held if r["seed"] in heldout else None
            if into is not None:
                fields = ("regime", "method", "schedule", "rate", "seed", "off", "max_epochs")
                into[key({k: v for k, v in r.items() if k in fields})] = r
    started = time.perf_counter()
    if args.smoke and not args.summarise_only:
        execute(smoke_tasks(), args.workers, done)
    elif not args.summarise_only:
        run_all(args.workers, done, args.regimes, not args.no_ablations, seeds)
        execute(tasks_heldout(done, args.regimes, heldout), args.workers, held)
    finish(done, started, held, ran=not args.summarise_only)


def run_all(
    workers: int, done: dict[str, dict], regimes: list[str], ablations: bool = True, seeds: tuple[int, ...] = SEEDS
) -> None:
    tasks = [t for t in tasks_main(seeds) if t["regime"] in regimes and (ablations or t["method"] != "ablation")]
    execute(tasks, workers, done)
    if not ablations:
        return
    warm = tasks_warm(done, seeds)
    for task in warm:
        if (r := done.get(key(task))) is not None and r.get("kb_digest") != kb_digest(task["kb"]):
            del done[key(task)]  # built from records since re-run (a disturbed adaptive run): stale
    execute(warm, workers, done)


def tasks_warm(done: dict[str, dict], seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    """Knowledge-base warm starts: each regime starts from the records of the other regimes' adaptive runs."""
    warm = []
    for regime in REGIMES:
        kb = [r["record"] for r in done.values() if r["method"] == "adaptive" and r["regime"] != regime]
        warm += [{"regime": regime, "method": "kb_warm", "seed": seed, "kb": kb} for seed in seeds]
    return warm


def kb_digest(kb: list[dict]) -> str:
    """Fingerprint of the records a warm start was built from: a warm run whose base has changed since
    (an adaptive run re-run) is run again instead of being resumed."""
    canonical = json.dumps(sorted(json.dumps(r, sort_keys=True) for r in kb))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def machine() -> dict:
    """The CPU the summary was written on: seeded runs give different floats on another CPU, and in this
    bimodal training that can move a run from one mode to the other. The model name alone does not tell
    CPUs apart (virtual machines report "AMD EPYC" for several generations), so the family, model and
    the vector kernels torch dispatches to (``cpu_capability``; AVX2 and AVX512 kernels may round
    differently) are kept beside it: runs compare only where all of them agree."""
    import platform

    import torch

    fields = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if not name.strip():
                break  # the first processor's block is enough
            fields.setdefault(name.strip(), value.strip())
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }


def finish(done: dict[str, dict], started: float, held: dict[str, dict] | None = None, ran: bool = True) -> None:
    """Writes and prints the summary. ``ran=False`` (``--summarise-only``): the runs were measured
    earlier, so the summary keeps the ``machine`` and ``bench_s`` of the one it replaces."""
    summary = summarise(done)
    summary["heldout"] = summarise_heldout(done, held or {})
    for regime, h in summary["heldout"].items():  # the goal of the scheduler, read per regime
        reg = summary["regimes"][regime]
        reg.update(grid_val_picked_ratio=h["ratio"], heldout_seeds=h["seeds"], ci95=h["ci95"])
        reg["goals"].update({f"grid_val_picked_ratio>={GOAL_RATIO}": h["passed"], "within_noise": h["within_noise"]})
    summary["goals"] = {
        f"grid_val_picked_ratio>={GOAL_RATIO} in every regime": all(
            summary["heldout"].get(r, {}).get("passed", False) for r in REGIMES),
        f"at least {HELDOUT} held-out seeds in every regime": all(
            len(summary["heldout"].get(r, {}).get("seeds", ())) >= HELDOUT for r in REGIMES),
    }
    path = RESULTS / "scheduler.json"
    previous = json.loads(path.read_text()) if not ran and path.exists() else {}
    summary["bench_s"] = previous.get("bench_s", time.perf_counter() - started)
    summary["machine"] = previous.get("machine") or machine()
    if not ran:
        summary["summarised_on"] = machine()
    path.write_text(json.dumps(summary, indent=2))
    plot(summary, done, RESULTS / "scheduler.png")
    for regime, reg in summary["regimes"].items():
        if "missing" in reg:
            print(f"== {regime}: {reg['missing']}")
            continue
        print(f"== {regime}: grid best {reg['grid_best_ndcg10']:.4f} ({reg['grid_best_config']}, mean of "
              f"{reg['grid_best_seeds']} seeds; best single run {reg['grid_best_single_run']:.4f}), "
              f"grid epochs {reg['grid_total_epochs']}")
        vp = reg["grid_val_picked_config"]
        print(f"  picked by validation instead: {vp[0]} x{vp[1]:g}, test ndcg10 {reg['grid_val_picked_ndcg10']:.4f} "
              f"({reg['goals']['grid_val_picked_vs_grid_best']:.3f} of the grid best); validation/test correlation "
              + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in reg["validation_test_corr"].items()))
        for m in ("adaptive", *DEFAULTS):
            e = reg[m]
            if e is None:
                print(f"  {m:>9}: not run")
                continue
            to95 = "never" if e["epochs_to_95"] is None else f"{e['epochs_to_95']:.2f}"
            print(f"  {m:>9}: ndcg10 {e['ndcg10']:.4f} ± {e['ndcg10_std']:.4f}  epochs_to_95 {to95}  "
                  f"epochs {e['epochs']:.1f}  compute epochs {e['compute_epochs']:.1f}  ({e['seeds']} seeds)")
        print("  goals:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in reg["goals"].items()})
        print("  ablations:", {k: round(v["ndcg10"], 4) for k, v in reg["ablations"].items()})
        if "kb_warm_epochs_to_95_runs" in reg:
            print("  knowledge base, epochs to 95% by seed, warm / cold:",
                  {s: (w, reg["kb_cold_epochs_to_95_runs"][s]) for s, w in reg["kb_warm_epochs_to_95_runs"].items()})
    for regime, h in summary["heldout"].items():
        ci = "n/a" if h["ci95"] is None else f"[{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}]"
        verdict = "met" if h["passed"] else "missed, within noise" if h["within_noise"] else "missed"
        print(f"held-out seeds {h['seeds'][0]}-{h['seeds'][-1]} ({len(h['seeds'])}), {regime}: adaptive "
              f"{h['adaptive_ndcg10']:.4f} vs {h['grid_config'][0]} x{h['grid_config'][1]:g} (picked by validation on "
              f"the main seeds) {h['grid_config_ndcg10']:.4f}: ratio {h['ratio']:.3f}, 95% CI {ci}, adaptive better on "
              f"{h['adaptive_wins']} of {len(h['seeds'])}; goal {h['goal']} {verdict}")
    print("goals:", summary["goals"])
    print(f"overhead {summary['overhead']}  kb_warm_vs_cold_epochs_ratio {summary['kb_warm_vs_cold_epochs_ratio']} "
          f"({summary['kb_pairs_compared']} regime-seed pairs)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
