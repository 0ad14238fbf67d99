"""Scale: the pipeline's stages on synthetic logs of 10^5 to 10^7 events, time and memory per stage.

Each size is a log of ``recsys_retrain.synthetic`` (the MovieLens-100K fit at that size, one year, one
drift of each kind), run in its own process so its peak memory is its own:

- ``synth_s``: ``synthesize`` writing the log (parquet, chunked);
- ``bootstrap_s``: ``bootstrap_feature_repo`` with everything before the last week;
- ``ingest_batch_s``: ``ingest`` of the week's first ``BATCH_EVENTS`` events (the same batch size at S2 and
  S3: the cost follows the batch); ``ingest_week_s``: that and the rest of the week (validate, deduplicate,
  the feature rows of the batch's days from the rolling state, append; ``materialize=False``);
- one full cycle of ``recsys_retrain.cycle`` on the week, as the scheduled DAG runs it (``pull_s``,
  ``validate_s``, ``drift_s``, ``calibrate_s``, ``train_s_per_epoch``, ``evaluate_s``, ``gate_s``, their sum
  ``cycle_s``), with ``train.epochs`` = ``EPOCHS``, ``train.history_days`` = ``HISTORY_DAYS`` (the pull
  reads that many days before the week) and the adaptive plan's epoch budget capped by ``SCHEDULE``;
- after the cycle, not timed: ``ndcg10_model`` (the cycle's challenger, as it would be gated and served)
  against ``ndcg10_recent_pop`` (``RecentPopular`` over 28 days) on the same users, with a paired bootstrap
  95% CI of the difference (``model_beats_recent_pop``: its lower end above 0); ``samples_per_s`` and
  ``bare_torchrec_samples_per_s``: our training steps and a bare TorchRec loop on the cycle's history, same
  batches and tables (``bench/scale_train.py``), and their ratio ``train_vs_bare``;
- ``peak_rss_mb``: the process's peak resident memory (synthesis and bootstrap included);
- ``loglog_slope`` (in ``goals``): the slope of log ``cycle_s`` against log events over the sizes.

Apart: ``evaluate_10k_x_50k_s``, ``user_metrics`` of an untrained two-tower model (the cost does not
depend on the weights) for up to 10,000 users (those of a 14-day holdout with a new item to find, as many
as the generated log has: ``users`` says how many) against 50,000 items; ``train_50k_items``, one epoch of ``train``
on 100,000 events over 50,000 items with the full softmax and with the sampled one (logQ), samples per
second and NDCG@10 on the week after.

Writes bench/results/scale.json and scale.png (time and memory per stage against events,
``bench/scale_plot.py``; ``--out`` for another folder). ``--smoke``: a 20,000-event log, one epoch,
a 1,000 x 5,000 evaluation, training over 5,000 items.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess  # nosec B404  # runs this interpreter on this script, one size per process
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
K = 10
EPOCHS = {"S1": 16, "S2": 2, "S3": 1, "smoke": 1}  # S1: train.epochs' default; S2, S3: what a bench run affords
HISTORY_DAYS = {"S3": 28}  # train.history_days where not the default (365): S3 trains on its last four weeks
# The adaptive plan's epoch budget where a bench run cannot afford its default (at least 3 epochs, 800,000 examples):
SCHEDULE = {"S2": {"min_epochs": 1, "target_examples": 500_000}, "S3": {"min_epochs": 1, "target_examples": 500_000}}
BATCH_EVENTS = {"S1": 2_000, "S2": 15_000, "S3": 15_000, "smoke": 500}  # the fixed-size batch of ingest_batch_s
GOALS = {"evaluate_10k_x_50k_s": 30.0, "synth_10m_s": 180.0, "s3_cycle_s": 900.0, "s3_peak_rss_mb": 8192.0}


def loglog_slope(per_size: dict) -> float | None:
    """Least-squares slope of log(cycle_s) against log(events) over the sizes that completed a cycle."""
    points = [(r["events"], r["cycle_s"]) for r in per_size.values() if r.get("cycle_s")]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args, **kwargs):
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - began, 3)


def config_for(size: str):
    from recsys_retrain.synthetic import SIZES, default_drifts

    if size == "smoke":
        base = replace(SIZES["S1"], n_events=20_000, n_users=300, n_items=500, days=91)
    else:
        base = SIZES[size]
    return replace(base, drifts=default_drifts(base.days))


def one_size(size: str, work: Path, capped: bool = True) -> dict:
    """Synthesis, bootstrap, ingest, then one full cycle of ``recsys_retrain.cycle`` on one synthetic size, in this process.

    ``capped``: ``EPOCHS`` and ``SCHEDULE`` bound the training; False: the settings' own epochs and the
    adaptive plan's own budget, as a deployment with the defaults would train (``--uncapped``).
    """
    from recsys_retrain import cycle
    from recsys_retrain.airflow_local import quiet_libraries
    from recsys_retrain.data.ingest import bootstrap_feature_repo, ingest
    from recsys_retrain.data.load import RawData
    from recsys_retrain.resources import copy_definitions
    from recsys_retrain.settings import Settings
    from recsys_retrain.synthetic import load_synthetic, synthesize

    quiet_libraries()
    config = config_for(size)
    log, synth_s = _timed(synthesize, config, work / "log")
    out = {"events": log.events, "users": config.n_users, "items": config.n_items, "days": config.days,
           "synth_s": synth_s, "synth_rss_mb": round(_rss_mb())}
    print(f"[{size}] synthesized {log.events} events in {synth_s:.1f} s", flush=True)
    raw = load_synthetic(log.folder)
    end = pd.Timestamp(config.start, tz="UTC") + pd.Timedelta(days=config.days)
    t0 = end - pd.Timedelta(days=7)
    inter = raw.interactions
    before, week = inter[inter["timestamp"] < t0], inter[inter["timestamp"] >= t0].sort_values("timestamp", kind="stable")
    repo = copy_definitions(ROOT / "features", work / "features")
    _, out["bootstrap_s"] = _timed(bootstrap_feature_repo, RawData(before, raw.users, raw.items), repo)
    out["bootstrap_rss_mb"] = round(_rss_mb())
    del raw, inter, before
    batch = BATCH_EVENTS[size]
    first, rest = week.iloc[:batch], week.iloc[batch:]
    result, out["ingest_batch_s"] = _timed(ingest, first, repo, materialize=False)
    out["ingest_batch_rows"] = result.added
    result, rest_s = _timed(ingest, rest, repo, materialize=False)
    out["ingest_week_s"] = round(out["ingest_batch_s"] + rest_s, 3)
    out["ingest_week_rows"] = out["ingest_batch_rows"] + result.added
    print(f"[{size}] bootstrap {out['bootstrap_s']:.1f} s; ingest of {out['ingest_batch_rows']} rows "
          f"{out['ingest_batch_s']:.1f} s, of the week ({out['ingest_week_rows']} rows) {out['ingest_week_s']:.1f} s", flush=True)
    del week, first, rest

    base = Settings(home=work / "home", feature_repo=repo)
    s = base.model_copy(update={
        "train": base.train.model_copy(update={"epochs": EPOCHS[size] if capped else base.train.epochs,
                                               "history_days": HISTORY_DAYS.get(size, 365)}),
        "schedule": base.schedule.model_copy(update=SCHEDULE.get(size, {}) if capped else {}),
    })
    steps: dict[str, float] = {}

    def step(name, fn, *args, **kwargs):
        result, steps[name] = _timed(fn, *args, **kwargs)
        print(f"[{size}] {name} {steps[name]:.1f} s (RSS peak {_rss_mb():.0f} MB)", flush=True)
        return result

    pulled = step("pull", cycle.pull, t0.isoformat(), end.isoformat(), settings=s)
    pulled = step("validate", cycle.validate, pulled, settings=s)
    drifted = step("drift", cycle.drift, pulled, settings=s)
    plan = step("calibrate", cycle.calibrate, pulled, drifted, settings=s)
    trained = step("train", cycle.train, pulled, settings=s, plan=plan)
    evaluated = step("evaluate", cycle.evaluate, pulled, trained, settings=s)
    summary = step("gate", cycle.gate, pulled, drifted, trained, evaluated, settings=s)
    epochs = max(len(trained.get("epoch_losses") or []), 1)
    out.update({
        "history_days": s.train.history_days, "history_rows": pulled["rows_history"], "holdout_rows": pulled["rows_window"],
        "pull_s": steps["pull"], "validate_s": steps["validate"], "drift_s": steps["drift"],
        "calibrate_s": steps["calibrate"], "epochs": epochs, "train_s": steps["train"],
        "train_s_per_epoch": round(steps["train"] / epochs, 3), "evaluate_s": steps["evaluate"], "gate_s": steps["gate"],
        "cycle_s": round(sum(steps.values()), 1), "drift_severity": drifted["severity"],
        "ndcg10_model": evaluated["challenger"].get(f"ndcg_at_{K}"), "promoted": bool(summary.get("promoted")),
        "peak_rss_mb": round(_rss_mb()), "capped": capped,
    })
    print(f"[{size}] cycle {out['cycle_s']:.1f} s; peak RSS {out['peak_rss_mb']} MB", flush=True)
    out.update(against_recent_popularity(pulled["run_dir"]))
    print(f"[{size}] NDCG@{K} model {out['ndcg10_model']} recent pop {out['ndcg10_recent_pop']}: "
          f"{out['model_minus_recent_pop']:+.4f} (95% CI {out['model_minus_recent_pop_ci95'][0]:+.4f}, "
          f"{out['model_minus_recent_pop_ci95'][1]:+.4f}) on {out['eval_users']} users", flush=True)
    out.update(training_speed(pulled["run_dir"], s, work / "speed", size))
    print(f"[{size}] training {out['samples_per_s']} samples/s, bare TorchRec {out['bare_torchrec_samples_per_s']} "
          f"({out['train_vs_bare']:.2f}x)", flush=True)
    return out


def against_recent_popularity(run_dir: str) -> dict:
    """The cycle's challenger against the most popular items of the last 28 days, user by user (not timed).

    The same holdout users, the challenger's per-user NDCG@K as the cycle wrote it; a
    paired bootstrap 95% CI of the difference (the gate's own ``paired_bootstrap``).
    """
    import json

    from recsys_retrain.baselines import RecentPopular
    from recsys_retrain.evaluate import UserEval, user_metrics
    from recsys_retrain.gate import paired_bootstrap
    from recsys_retrain.paths import CyclePaths

    p = CyclePaths(Path(run_dir))
    history, holdout, catalogue = (pd.read_parquet(f) for f in (p.history, p.holdout, p.catalogue))
    model = UserEval.from_dict(json.loads(p.per_user.read_text())["challenger"])
    pop = user_metrics(RecentPopular(history, catalogue, 28), history, holdout, K)
    if not np.array_equal(model.user_ids, pop.user_ids):
        raise RuntimeError("the model and recent popularity were scored on different users")
    iv = paired_bootstrap(model.ndcg, pop.ndcg, 2000, 0, 0.95)
    return {"ndcg10_model": round(float(model.ndcg.mean()), 4), "ndcg10_recent_pop": round(float(pop.ndcg.mean()), 4),
            "eval_users": int(len(model.user_ids)), "model_minus_recent_pop": round(iv.mean, 4),
            "model_minus_recent_pop_ci95": [round(iv.low, 4), round(iv.high, 4)],
            "model_beats_recent_pop": bool(iv.low > 0)}


def training_speed(run_dir: str, s, out_dir: Path, size: str) -> dict:
    """Our training steps against a bare TorchRec loop on the cycle's history, same batches and tables (not timed).

    ``bench/scale_train.py``'s ``ours_and_bare``: the whole epoch at S1, its first 200 batches above.
    """
    from scale_train import ours_and_bare

    from recsys_retrain.paths import CyclePaths

    p = CyclePaths(Path(run_dir))
    history, catalogue = pd.read_parquet(p.history), pd.read_parquet(p.catalogue)
    speed = ours_and_bare(history, catalogue, s.train, out_dir, n_batches=None if size == "S1" else 200)
    return {"samples_per_s": speed["samples_per_s"], "bare_torchrec_samples_per_s": speed["bare_torchrec_samples_per_s"],
            "train_vs_bare": speed["ratio"]}


def evaluation_at(n_users: int, n_items: int, work: Path) -> dict:
    """``user_metrics`` of an untrained two-tower model for ``n_users`` holdout users against ``n_items`` items."""
    import torch

    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.model import FeatureEncoder, Recommender, build_two_tower
    from recsys_retrain.synthetic import MOVIELENS_FIT

    config = replace(MOVIELENS_FIT, n_events=60 * n_users, n_users=int(n_users * 1.6), n_items=n_items, days=42,
                     start="2000-01-03", user_new_share=0.0, user_lifetime_days=10_000.0)
    history, holdout, items = synthetic_split(config, work / "eval_log", holdout_days=14)
    seen = pd.MultiIndex.from_frame(history[["user_id", "item_id"]])
    fresh = holdout[~pd.MultiIndex.from_frame(holdout[["user_id", "item_id"]]).isin(seen)]
    chosen = np.sort(fresh["user_id"].unique())[:n_users]  # users with something new to find: the ones ranked
    holdout = holdout[holdout["user_id"].isin(chosen)]
    encoder = FeatureEncoder.fit(history, items)
    torch.manual_seed(0)
    model = Recommender(build_two_tower(encoder, dim=32), encoder, items)
    scored, seconds = _timed(user_metrics, model, history, holdout, K)
    return {"users": scored.n_users, "items": n_items, "history_rows": len(history), "evaluate_s": seconds,
            "peak_rss_mb": round(_rss_mb())}


def training_at(n_items: int, n_events: int, work: Path) -> dict:
    """One epoch of ``train`` over a catalogue of ``n_items``: the full softmax against the sampled one (logQ)."""
    from recsys_retrain.evaluate import user_metrics
    from recsys_retrain.settings import TrainSettings
    from recsys_retrain.synthetic import MOVIELENS_FIT
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.loop import train

    config = replace(MOVIELENS_FIT, n_events=n_events, n_users=n_events // 20, n_items=n_items, days=56,
                     start="2000-01-03", user_new_share=0.0, user_lifetime_days=10_000.0)
    history, holdout, items = synthetic_split(config, work / "train_log", holdout_days=7)
    out = {"items": n_items, "examples": len(history)}
    train(history.iloc[:2_048], items, work / "warm-up", TrainSettings(epochs=1), progress=False)  # untimed: first-call costs
    for name, above in (("full", 10**9), ("sampled", 1)):
        settings = TrainSettings(epochs=1, sampled_softmax_above=above)
        trained = train(history, items, work / name, settings, progress=False)
        out[f"{name}_samples_per_s"] = round(trained.epoch_samples[-1] / trained.step_seconds)
        model = load_checkpoint(Path(trained.checkpoint))
        out[f"{name}_ndcg10"] = round(user_metrics(model, history, holdout, K).mean_ndcg, 4)
        print(f"[train {n_items} items] {name}: {out[f'{name}_samples_per_s']} samples/s, NDCG@10 {out[f'{name}_ndcg10']}",
              flush=True)
    out["peak_rss_mb"] = round(_rss_mb())
    return out


def synthetic_split(config, folder: Path, holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A synthetic log in ``folder``, joined to its users and split at ``holdout_days`` before its end: history, holdout, items."""
    from recsys_retrain.synthetic import load_synthetic, synthesize

    raw = load_synthetic(synthesize(config, folder).folder)
    users = raw.users.rename(columns={"age": "user_age", "gender": "user_gender", "occupation": "user_occupation"})
    items = raw.items.rename(columns={"genres": "item_genres", "release_year": "item_release_year"})
    inter = raw.interactions.merge(users, on="user_id")
    cut = inter["timestamp"].max() - pd.Timedelta(days=holdout_days)
    return inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut], items


def run_child(args: list[str], out: Path) -> dict:
    """This script with ``args`` in a fresh interpreter; its JSON result, or the error it ended with."""
    proc = subprocess.run([sys.executable, __file__, *args, "--child-out", str(out)], cwd=ROOT)  # nosec B603  # this script, fixed args
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit status {proc.returncode}"}
    return json.loads(out.read_text())


def main(smoke: bool = False) -> dict:
    sizes = ["smoke"] if smoke else ["S1", "S2", "S3"]
    eval_shape = (1_000, 5_000) if smoke else (10_000, 50_000)
    train_shape = (5_000, 10_000) if smoke else (50_000, 100_000)  # items, events
    with tempfile.TemporaryDirectory() as tmp:
        per_size = {size: run_child(["--size", size], Path(tmp) / f"{size}.json") for size in sizes}
        big_eval = run_child(["--evaluate", f"{eval_shape[0]},{eval_shape[1]}"], Path(tmp) / "eval.json")
        big_train = run_child(["--train", f"{train_shape[0]},{train_shape[1]}"], Path(tmp) / "train.json")
    goals = {}
    ev = big_eval.get("evaluate_s")
    goals["evaluate_10k_x_50k_s"] = {"goal": f"<= {GOALS['evaluate_10k_x_50k_s']}", "value": ev,
                                     "met": ev is not None and ev <= GOALS["evaluate_10k_x_50k_s"] and not smoke}
    s2, s3 = per_size.get("S2", {}), per_size.get("S3", {})
    goals["synth_10m_s"] = {"goal": f"<= {GOALS['synth_10m_s']} (S3)", "value": s3.get("synth_s"),
                            "met": s3.get("synth_s") is not None and s3["synth_s"] <= GOALS["synth_10m_s"]}
    goals["s3_cycle_s"] = {"goal": f"<= {GOALS['s3_cycle_s']}", "value": s3.get("cycle_s"),
                           "met": s3.get("cycle_s") is not None and s3["cycle_s"] <= GOALS["s3_cycle_s"]}
    goals["s3_peak_rss_mb"] = {"goal": f"<= {GOALS['s3_peak_rss_mb']}", "value": s3.get("peak_rss_mb"),
                               "met": s3.get("peak_rss_mb") is not None and s3["peak_rss_mb"] <= GOALS["s3_peak_rss_mb"]}
    ratio = (round(s3["ingest_batch_s"] / s2["ingest_batch_s"], 2)
             if s2.get("ingest_batch_s") and s3.get("ingest_batch_s") is not None else None)
    goals["ingest_batch_s3_over_s2"] = {"goal": f"<= 1.5 (a {BATCH_EVENTS['S3']}-event batch at both sizes)",
                                        "value": ratio, "met": ratio is not None and ratio <= 1.5}
    slope = loglog_slope(per_size)
    goals["loglog_slope"] = {"goal": "<= 1.0 (cycle_s against events)", "value": slope,
                             "met": slope is not None and slope <= 1.0 and not smoke}
    beats = {size: r.get("model_beats_recent_pop") for size, r in per_size.items()}
    goals["model_beats_recent_pop_every_size"] = {"goal": "true at every size", "value": beats,
                                                  "met": all(v is True for v in beats.values())}
    vs_bare = s3.get("train_vs_bare")
    goals["s3_train_vs_bare_torchrec"] = {"goal": ">= 0.7 (samples/s, same batches and tables)", "value": vs_bare,
                                          "met": vs_bare is not None and vs_bare >= 0.7}
    full, sampled = big_train.get("full_samples_per_s"), big_train.get("sampled_samples_per_s")
    goals["sampled_softmax_speedup_50k_items"] = {
        "goal": "> 1 (a step scores the batch's positives and 4,096 negatives, not every item)",
        "value": round(sampled / full, 2) if full and sampled else None, "met": bool(full and sampled and sampled > full)}
    return {"sizes": per_size, "evaluate_10k_x_50k": big_eval, "train_50k_items": big_train, "goals": goals,
            "machine": f"{os.cpu_count()} cores", "smoke": smoke}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest run of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for scale.json (default bench/results; "
                        "a temporary folder with --smoke)")
    parser.add_argument("--uncapped", action="store_true", help="with --size: train with the default epochs and plan budget")
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out is not None:
        with tempfile.TemporaryDirectory() as work:
            if args.size:
                child = one_size(args.size, Path(work), capped=not args.uncapped)
            elif args.evaluate:
                n_users, n_items = (int(x) for x in args.evaluate.split(","))
                child = evaluation_at(n_users, n_items, Path(work))
            else:
                n_items, n_events = (int(x) for x in args.train.split(","))
                child = training_at(n_items, n_events, Path(work))
        args.child_out.write_text(json.dumps(child))
        sys.exit(0)
    result = main(args.smoke)
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.smoke else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'scale.json'}")
    from scale_plot import plot_scale

    print(f"plot: {plot_scale(result, out_dir / 'scale.png') or 'one size only (smoke): none'}")
