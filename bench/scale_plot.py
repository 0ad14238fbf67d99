"""The scaling plot: time and memory per stage against events, from ``bench/results/scale.json``.

``bench/scale.py`` calls :func:`plot_scale` after each run; ``python bench/scale_plot.py
[scale.json] [out.png]`` redraws it from a saved result. Both axes are logarithmic, so a
stage whose cost follows the events runs parallel to the dotted slope-1 guide, and one that
follows the batch (``ingest_week_s``) stays flat.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = {  # key in each size's result: label
    "ingest_week_s": "ingest one week",
    "pull_s": "pull",
    "drift_s": "drift check",
    "train_s_per_epoch": "train (one epoch)",
    "evaluate_s": "evaluate",
    "cycle_s": "whole cycle",
}


def plot_scale(result: dict, out: Path) -> Path | None:
    """Draws the two panels into ``out`` (PNG); None when fewer than two sizes have figures."""
    sizes = [s for s in result.get("sizes", {}).values() if s.get("events")]
    sizes.sort(key=lambda s: s["events"])
    if len(sizes) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for key, label in STAGES.items():
        points = [(s["events"], s[key]) for s in sizes if s.get(key)]
        if points:
            xs, ys = zip(*points)
            left.plot(xs, ys, marker="o", label=label, linewidth=2.5 if key == "cycle_s" else 1.2)
    events = [s["events"] for s in sizes]
    cycle = [s["cycle_s"] for s in sizes if s.get("cycle_s")]
    if cycle:  # slope-1 guide through the smallest size's cycle
        left.plot([events[0], events[-1]], [cycle[0], cycle[0] * events[-1] / events[0]], ":", color="grey",
                  label="slope 1 (cost follows events)")
    left.set(xscale="log", yscale="log", xlabel="events in the log", ylabel="seconds", title="time per stage")
    left.legend(fontsize=7)
    rss = [(s["events"], s["peak_rss_mb"]) for s in sizes if s.get("peak_rss_mb")]
    if rss:
        xs, ys = zip(*rss)
        right.plot(xs, [y / 1024 for y in ys], marker="o", label="peak RSS of the cycle")
    right.axhline(8, color="red", linestyle="--", label="goal at S3: 8 GB")
    right.set(xscale="log", xlabel="events in the log", ylabel="GB", title="memory")
    right.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "scale.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    print(plot_scale(json.loads(src.read_text()), dst) or "fewer than two sizes with figures: no plot")
