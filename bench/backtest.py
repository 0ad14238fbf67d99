"""Backtest benchmark: what each retraining policy serves, week after week, against the weekly-refit baselines.

Replays ``recsys_retrain.backtest`` (the production gate, refit and scheduler; see its
docstring for the protocol) on two datasets:

* ``movielens``: MovieLens-100K, 21 windows from 1997-10-06 (20 scored weeks);
* ``synthetic``: ``recsys_retrain.simulate.drifting_timeline``, sessions resampled from
  MovieLens-100K (stationary) with a regime change on window 8 and new items on
  window 14, where retraining must help (ground truth in ``truth``).

Per dataset and policy (``never``, ``weekly``, ``drift``, ``drift_adaptive``,
``drift_warm``; references ``recent_pop``, ``ease``, refit every week):
``mean_ndcg10``, ``ci_vs_never`` and ``ci_vs_recent_pop`` (paired bootstrap 95% interval
of the mean per-window difference, windows resampled, BCa), ``promotions``,
``train_epochs``, ``train_s`` (retraining compute, refits included) and
``staleness_days`` (mean over scored weeks of the days between a week's start and the
end of the served model's data). ``gate_policies`` replays the retraining policies under
each gate policy on the same models, which is how the default ``gate.policy`` is chosen.

Goals, on every dataset (``goals``; ``verdicts`` says "within noise" where a point
estimate misses by less than its interval's half-width):

* the best pipeline policy's mean served NDCG@10 >= recent popularity's and >= EASE's;
* every retraining policy promotes at least once; on the synthetic timeline the best
  pipeline policy beats ``never`` with an interval that excludes 0;
* ``drift_adaptive`` or ``drift_warm`` serves >= ``weekly``'s NDCG@10 at <= 50% of its
  training seconds;
* every promoted model has seen data up to its window's end (staleness 0 at promotion).

``refit_modes`` (after the datasets, or alone with ``--refit-modes``): ``drift_adaptive`` on MovieLens
replayed once more under each other ``train.refit`` mode, against the main run's (the
default, ``warm``) week by week: how the default refit is chosen.

    .venv/bin/python bench/backtest.py [--only movielens|synthetic] [--refit-modes] [--smoke] [--out DIR]

Writes bench/results/backtest.json and backtest_<dataset>.png. ``--smoke``: three windows,
one epoch, tiny tables, no rate probe (the numbers mean nothing; it checks the path end to end).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_retrain import backtest as bt  # noqa: E402
from recsys_retrain.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RETRAINING = ("weekly", "drift", "drift_adaptive", "drift_warm")
GATE_POLICIES = ("non_inferiority", "superiority", "fresher_unless_worse")
SMOKE = {"weeks": 3, "train": {"epochs": 1, "embedding_dim": 8}, "drift": {"permutations": 100},
         "schedule": {"probe_rates": [], "kb_probe_rates": []}}  # the rate probe's passes: covered by the scheduler's smoke


def verdict(diff: float, low: float, high: float, need: float = 0.0) -> str:
    """``met`` / ``within noise`` / ``missed`` for "diff >= need", read with its interval."""
    if diff >= need:
        return "met"
    return "within noise" if need - diff < (high - low) / 2 else "missed"


def goals(summary: dict, ndcg: dict[str, list[float]], dataset: str) -> tuple[dict, dict]:
    """The goals of the module docstring on one dataset's summary, and their verdicts with CIs."""
    pipeline = {p: summary[p] for p in bt.PIPELINE_POLICIES if p in summary}
    best = max(pipeline, key=lambda p: pipeline[p]["mean_ndcg10"])
    g, v = {}, {"best_pipeline_policy": best}
    for ref in ("recent_pop", "ease"):
        ci = bt.paired_ci(np.asarray(ndcg[best]), np.asarray(ndcg[ref]))
        g[f"best_pipeline>={ref}"] = bool(ci["diff"] >= 0)
        v[f"best_pipeline_vs_{ref}"] = {**ci, "verdict": verdict(ci["diff"], ci["low"], ci["high"])}
    g["every_retraining_policy_promotes"] = all(summary[p]["promotions"] >= 1 for p in RETRAINING if p in summary)
    ci = summary[best]["ci_vs_never"]
    v["best_vs_never"] = ci
    if dataset == "synthetic":
        g["synthetic_best_beats_never_ci"] = bool(ci["low"] > 0)
    weekly = summary["weekly"]
    cheap = {}
    for p in ("drift_adaptive", "drift_warm"):
        ci = bt.paired_ci(np.asarray(ndcg[p]), np.asarray(ndcg["weekly"]))
        share = summary[p]["train_s"] / weekly["train_s"] if weekly["train_s"] else float("inf")
        cheap[p] = {**ci, "train_s_share": round(share, 3), "verdict": verdict(ci["diff"], ci["low"], ci["high"])}
    v["drift_vs_weekly"] = cheap
    g["drift_policy>=weekly_at_half_compute"] = any(c["diff"] >= 0 and c["train_s_share"] <= 0.5 for c in cheap.values())
    g["promoted_staleness_0"] = all(d == 0 for p in pipeline.values() for d in p["promoted_staleness_days"])
    return g, v


def run(dataset: str, root: Path, smoke: bool, out_dir: Path) -> dict:
    """One dataset's replay: its summary, gate-policy comparison, goals; the plot lands in ``out_dir``."""
    from recsys_retrain.cli import load_source
    from recsys_retrain.cycle import with_overrides

    settings = Settings(home=root / "home")
    if smoke:
        settings = with_overrides(settings, {k: v for k, v in SMOKE.items() if k != "weeks"})
    raw, truth = bt.timeline(dataset, load_source(settings, None))
    s = bt.feature_store(raw, root / "store", settings)
    spec = bt.DATASETS[dataset]
    starts = bt.window_starts(spec["start"], SMOKE["weeks"] if smoke else spec["weeks"])
    started = time.perf_counter()
    result = bt.backtest(s, starts, root / "replay", gate_policies=GATE_POLICIES)
    summary = result.summary()
    ndcg = {p.policy: list(p.ndcg10) for p in result.policies}
    by_gate = {result.gate_policy: {p: summary[p]["mean_ndcg10"] for p in RETRAINING if p in summary}}
    promotions = {result.gate_policy: {p: summary[p]["promotions"] for p in RETRAINING if p in summary}}
    for gate_policy, rows in result.by_gate_policy.items():
        by_gate[gate_policy] = {p.policy: round(p.mean_ndcg10, 5) for p in rows}
        promotions[gate_policy] = {p.policy: p.promotions for p in rows}
    g, v = goals(summary, ndcg, dataset)
    shutil.copy(result.plot_path, out_dir / f"backtest_{dataset}.png")
    return {
        "weeks": [w.split("/")[0][:10] for w in result.windows[1:]],
        "first_window": result.windows[0][:10],
        "severities": list(result.severities),
        "truth": truth,
        "gate_policy": result.gate_policy,
        "refit": result.refit,
        "policies": summary,
        "ndcg10_per_week": ndcg,
        "gate_policies": {"mean_ndcg10": by_gate, "promotions": promotions},
        "goals": g,
        "verdicts": v,
        "seconds": round(time.perf_counter() - started, 1),
    }


def refit_modes(root: Path, main: dict, smoke: bool, modes: tuple[str, ...] = ("scratch", "off")) -> dict:
    """``drift_adaptive`` on MovieLens under each refit mode in ``modes``, against the main run's default mode."""
    from recsys_retrain.cli import load_source
    from recsys_retrain.cycle import with_overrides

    policy, base = "drift_adaptive", main["refit"]
    out = {"policy": policy, base: {k: main["policies"][policy][k] for k in ("mean_ndcg10", "promotions", "train_s",
                                                                              "staleness_days")}}
    for mode in modes:
        settings = with_overrides(Settings(home=root / mode / "home"), {"train": {"refit": mode}})
        if smoke:
            settings = with_overrides(settings, {k: v for k, v in SMOKE.items() if k != "weeks"})
        raw, _ = bt.timeline("movielens", load_source(settings, None))
        s = bt.feature_store(raw, root / mode / "store", settings)
        spec = bt.DATASETS["movielens"]
        starts = bt.window_starts(spec["start"], SMOKE["weeks"] if smoke else spec["weeks"])
        result = bt.backtest(s, starts, root / mode / "replay", policies=("never", policy))
        row = result.summary()[policy]
        out[mode] = {k: row[k] for k in ("mean_ndcg10", "promotions", "train_s", "staleness_days")}
        out[mode][f"ci_vs_{base}"] = bt.paired_ci(result.policy(policy).ndcg10, main["ndcg10_per_week"][policy])
        print(f"refit {mode}: {out[mode]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(bt.DATASETS), action="append", help="dataset(s) to replay (default: all)")
    parser.add_argument("--refit-modes", action="store_true", help="only the refit-mode comparison on MovieLens, "
                        "against the results file's main run")
    parser.add_argument("--smoke", action="store_true", help="smallest run of the same path; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for backtest.json (default bench/results)")
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-backtest-")) if args.smoke else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "backtest.json"
    previous = json.loads(path.read_text()) if path.exists() and (args.only or args.refit_modes) else {}
    datasets = dict(previous.get("datasets", {}))
    work = Path(tempfile.mkdtemp(prefix="bench-backtest-work-"))
    out = previous
    try:
        if args.refit_modes:
            if "movielens" not in datasets:
                raise SystemExit("--refit-modes compares with the main MovieLens run: run bench/backtest.py first")
            out["refit_modes"] = refit_modes(work / "refit", datasets["movielens"], args.smoke)
            path.write_text(json.dumps(out, indent=2) + "\n")
            print(json.dumps(out["refit_modes"], indent=1))
            return
        for name in args.only or tuple(bt.DATASETS):
            print(f"== {name}", flush=True)
            datasets[name] = run(name, work / name, args.smoke, out_dir)
            print(json.dumps({name: {"policies": {p: {k: r[k] for k in ("mean_ndcg10", "ci_vs_never", "ci_vs_recent_pop",
                                                                        "promotions", "train_s", "staleness_days")}
                                                  for p, r in datasets[name]["policies"].items()},
                                     "goals": datasets[name]["goals"]}}, indent=1), flush=True)
            out = {**{k: v for k, v in previous.items() if k == "refit_modes"}, "datasets": datasets,
                   "goals": {f"{d}.{k}": v for d, r in datasets.items() for k, v in r["goals"].items()},
                   "protocol": "recsys_retrain.backtest; CIs: paired bootstrap over weeks (BCa, 10,000 resamples, seed 0)"}
            path.write_text(json.dumps(out, indent=2) + "\n")  # after each dataset: a long run keeps what it measured
        if not args.only:  # the whole benchmark: the refit modes too
            out["refit_modes"] = refit_modes(work / "refit", datasets["movielens"], args.smoke,
                                             ("scratch",) if args.smoke else ("scratch", "off"))
            path.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out["goals"], indent=1))


if __name__ == "__main__":
    main()
