"""Benchmark of recsys_retrain.drift on the recsys_retrain.simulate sandbox over real MovieLens-100K.

For every drift type of ``recsys_retrain.simulate.DRIFT_TYPES`` at its three magnitudes, the
detection rate (severity != "none") over ``--seeds`` seeds; the false-positive rate over
``--null-seeds`` no-drift pairs; and the wall time of one check on 100K and 1M rows
(verdict only, no Evidently HTML, best of three; the HTML time on 100K rows is reported
apart).

Windows are drawn by ``no_drift_pair`` as the cycle uses them: a reference of
``DriftSettings.reference_days`` (four weeks) and a current week, made of whole
MovieLens sessions (a user's rows on one day) resampled at the log's own session rate,
so about 80 sessions, 70 users and 3,200 rows a week, as in the real data. The drift is
injected into the current week of the same pair a null seed uses. What each magnitude
means in plain terms is in ``recsys_retrain.simulate.DRIFT_TYPES``'s docstring.

The champion's prediction drift (``prediction_score``, only checked when a champion
exists) is measured apart, on the first ``--score-pairs`` no-drift pairs: a champion
is trained on each pair's reference window (``TrainSettings()``, the pipeline's
defaults) and the check runs with ``champion_scorer``. ``prediction_score_fpr`` is how
often that signal alone exceeds its threshold though nothing drifted: the champion
scores rows it was trained on (reference) against rows it never saw (current).
``prediction_score_fpr_heldout_reference`` is the same with a champion trained on the
reference less its last week, and only that unseen last week scored as the
reference (the other reference rows get NaN scores, which the signal skips), so
both sides are rows the champion never saw. The data signals see the whole windows
either way; ``false_positive_rate_with_champion*`` is the whole check's false-alarm
rate with the champion's signal added, against
``false_positive_rate_without_champion_same_pairs`` on the same pairs.
``prediction_score_fpr_ci95`` is the Wilson 95% interval of the rate over the pairs.

Writes bench/results/drift.json and bench/results/drift.png.
Run: .venv/bin/python bench/drift.py [--seeds 20] [--null-seeds 100] [--score-pairs 50] [--smoke] [--out DIR]

``--smoke``: two seeds, two null seeds and two score pairs (champions of one epoch),
each timing once, and the "1M" timing on two copies of the log instead of ten
(``rows_1m`` holds the count); written to ``--out`` or a temporary folder, never
bench/results.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_retrain import simulate as sim
from recsys_retrain.data.load import load_movielens
from recsys_retrain.drift.check import check_drift
from recsys_retrain.settings import DriftSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
START = pd.Timestamp("2000-01-03", tz="UTC")  # first day of every pair's reference window
HELDOUT_DAYS = 7  # the reference's last week, which the held-out champion never trains on


def detected(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> bool:
    return check_drift(reference, current, None, settings).severity != "none"


def score_signal(report) -> bool:
    """Whether the ``prediction_score`` signal alone exceeded its threshold."""
    return next(s for s in report.signals if s.name == "prediction_score").drifted


def champion_false_alarms(pairs: list[tuple[pd.DataFrame, pd.DataFrame]], items: pd.DataFrame, settings: DriftSettings,
                          train_settings: TrainSettings) -> dict[str, float]:
    """False-alarm rates of the champion's prediction drift on no-drift ``pairs`` (see the module docstring)."""
    from recsys_retrain.drift.check import champion_scorer
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.loop import train

    catalogue = items[["item_id", "item_genres", "item_release_year"]]
    heldout_from = START + pd.Timedelta(days=settings.reference_days - HELDOUT_DAYS)
    fired = {"seen": [], "heldout": []}
    alarms = {"seen": [], "heldout": []}
    tested = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (reference, current) in enumerate(pairs):
            ts = dict(train_settings.model_dump(), seed=seed)
            seen = train(reference, catalogue, Path(tmp) / f"seen{seed}", TrainSettings(**ts), progress=False)
            scorer = champion_scorer(load_checkpoint(Path(seen.checkpoint)))
            report = check_drift(reference, current, None, settings, scorer)
            fired["seen"].append(score_signal(report))
            alarms["seen"].append(report.severity != "none")
            tested.append(next(s for s in report.signals if s.name == "prediction_score").tested)

            unseen = (reference["timestamp"] >= heldout_from).to_numpy()
            before = train(reference[~unseen], catalogue, Path(tmp) / f"heldout{seed}", TrainSettings(**ts), progress=False)
            scorer = champion_scorer(load_checkpoint(Path(before.checkpoint)))
            reference_scores = np.where(unseen, scorer(reference), np.nan)
            report = check_drift(reference, current, None, settings, reference_scores=reference_scores,
                                 current_scores=scorer(current))
            fired["heldout"].append(score_signal(report))
            alarms["heldout"].append(report.severity != "none")
            print(f"  champion pair {seed}: prediction_score fired {fired['seen'][-1]} "
                  f"(held-out reference {fired['heldout'][-1]})", flush=True)
    from scipy.stats import binomtest

    ci = binomtest(int(np.sum(fired["seen"])), len(pairs)).proportion_ci(0.95, method="wilson")
    return {
        "prediction_score_fpr": float(np.mean(fired["seen"])),
        "prediction_score_fpr_ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
        "prediction_score_tested": float(np.mean(tested)),
        "prediction_score_fpr_heldout_reference": float(np.mean(fired["heldout"])),
        "false_positive_rate_with_champion": float(np.mean(alarms["seen"])),
        "false_positive_rate_with_champion_heldout_reference": float(np.mean(alarms["heldout"])),
        "prediction_score_pairs": len(pairs),
    }


def scaled_base(base: pd.DataFrame, copies: int) -> pd.DataFrame:
    """``copies`` of the log with distinct users per copy (a bigger population, same behaviour)."""
    step = int(base["user_id"].max()) + 1
    return pd.concat([base.assign(user_id=base["user_id"] + k * step) for k in range(copies)], ignore_index=True)


def timed(base: pd.DataFrame, rows: int, settings: DriftSettings, out_dir: Path | None = None, repeats: int = 3) -> tuple[float, int]:
    """Best wall time of ``repeats`` checks on about ``rows`` rows (the best: the machine is shared), and the row count."""
    per_session = len(base) / base.groupby(["user_id", base["timestamp"].dt.floor("D")]).ngroups
    days = settings.reference_days
    sessions = int(rows / per_session * 7 / (days + 7))  # rows in both windows together
    reference, current = sim.no_drift_pair(base, 0, sessions=sessions, reference_days=days)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check_drift(reference, current, out_dir, settings)
        times.append(time.perf_counter() - start)
    return min(times), len(reference) + len(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--null-seeds", type=int, default=100)
    parser.add_argument("--score-pairs", type=int, default=50, help="no-drift pairs with a trained champion "
                        "(the prediction_score false-alarm rate)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".retrain" / "cache")
    parser.add_argument("--smoke", action="store_true", help="fewest seeds and repeats; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for drift.json and drift.png (default "
                        "bench/results; with --smoke a temporary folder)")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.null_seeds, args.score_pairs = 2, 2, 2
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-drift-")) if args.smoke else RESULTS)
    repeats, copies = (1, 2) if args.smoke else (3, 10)
    settings = DriftSettings()
    base = sim.base_log(load_movielens(args.cache))
    items = sim.catalogue(base)
    t0 = time.perf_counter()

    days = settings.reference_days
    n_pairs = max(args.seeds, args.null_seeds, args.score_pairs)
    pairs = [sim.no_drift_pair(base, seed, start=START, reference_days=days) for seed in range(n_pairs)]
    false_positives = [detected(r, c, settings) for r, c in pairs[: args.null_seeds]]
    detection: dict[str, dict[str, float]] = {}
    for name, (factory, magnitudes) in sim.DRIFT_TYPES.items():
        detection[name] = {}
        for m in magnitudes:
            hits = [detected(r, sim.inject(c, [factory(m)], seed, items), settings) for seed, (r, c) in enumerate(pairs[: args.seeds])]
            detection[name][str(m)] = float(np.mean(hits))
        print(f"{name:18s} " + "  ".join(f"{m}: {detection[name][str(m)]:.2f}" for m in magnitudes), flush=True)
    fpr = float(np.mean(false_positives))
    print(f"false_positive_rate {fpr:.3f} over {args.null_seeds} no-drift pairs; sweep {time.perf_counter() - t0:.0f} s")

    t_100k, n_100k = timed(base, 100_000, settings, repeats=repeats)
    t_1m, n_1m = timed(scaled_base(base, copies), copies * 100_000, settings, repeats=repeats)
    with tempfile.TemporaryDirectory() as tmp:
        t_html, _ = timed(base, 100_000, settings, Path(tmp), repeats=1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"drift_100k_s {t_100k:.2f} ({n_100k} rows)  drift_1m_s {t_1m:.2f} ({n_1m} rows)  "
          f"100k with Evidently HTML {t_html:.2f} s  peak RSS {peak_mb:.0f} MB")

    t_scores = time.perf_counter()  # after the peak RSS reading: training champions is no part of a check's memory
    champion = champion_false_alarms(pairs[: args.score_pairs], items, settings, TrainSettings(epochs=1) if args.smoke else TrainSettings())
    champion["prediction_score_s"] = round(time.perf_counter() - t_scores, 1)
    if args.score_pairs <= args.null_seeds:  # the same pairs' rate without the champion, for comparison
        champion["false_positive_rate_without_champion_same_pairs"] = float(np.mean(false_positives[: args.score_pairs]))
    print(f"prediction_score_fpr {champion['prediction_score_fpr']:.3f} over {args.score_pairs} no-drift pairs "
          f"(held-out reference {champion['prediction_score_fpr_heldout_reference']:.3f}); whole check with the champion "
          f"{champion['false_positive_rate_with_champion']:.3f} (held-out {champion['false_positive_rate_with_champion_heldout_reference']:.3f}); "
          f"{champion['prediction_score_s']:.0f} s")

    mids = {name: mags[1] for name, (_, mags) in sim.DRIFT_TYPES.items()}
    result = {
        "detection": detection,
        "false_positive_rate": fpr,
        "drift_100k_s": round(t_100k, 3),
        "drift_1m_s": round(t_1m, 3),
        "drift_100k_with_html_s": round(t_html, 3),
        "rows_100k": n_100k,
        "rows_1m": n_1m,
        "peak_rss_mb": round(peak_mb),
        "seeds": args.seeds,
        "null_seeds": args.null_seeds,
        **champion,
        "middle_magnitude": mids,
        "goals": {
            "false_positive_rate<=0.05": fpr <= 0.05,
            "middle_detection>=0.9": all(detection[n][str(m)] >= 0.9 for n, m in mids.items()),
            "drift_100k_s<=2": t_100k <= 2,
            "drift_1m_s<=15": t_1m <= 15,
            "prediction_score_fpr<=0.05": champion["prediction_score_fpr"] <= 0.05,
        },
        "settings": settings.model_dump(),
        "windows": f"{days}-day reference, 7-day current window of resampled MovieLens-100K sessions (recsys_retrain.simulate.no_drift_pair)",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(detection, fpr, out_dir / "drift.png")


def plot(detection: dict[str, dict[str, float]], fpr: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(detection), figsize=(12, 2.6), sharey=True)
    for ax, (name, rates) in zip(axes, detection.items()):
        ax.bar(list(rates), list(rates.values()), color=["#9ecae1", "#3182bd", "#08519c"])
        ax.axhline(0.9, color="green", lw=0.8, ls="--")
        ax.axhline(fpr, color="red", lw=0.8)
        ax.set_title(name.replace("_", " "), fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("detection rate", fontsize=8)
    fig.suptitle(f"drift detection by magnitude (green: 0.9 goal, red: false-positive rate {fpr:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


if __name__ == "__main__":
    main()
