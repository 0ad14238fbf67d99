"""The pipeline's visual report: one self-contained HTML page plus its figures as PNG files.

It reads what the cycles left in their folders (``<runs_dir>/<start>-<end>/``:
``profile.json``, ``drift/drift.json``, ``summary.json``, ``monitor.json``,
``served.json``, ``model/trace.json``) and the registry's alias history, and draws

* ``training.png``: the training curves of every trained model (loss per step, both
  learning rates) with each scheduler event as a marker on the loss curve, coloured by
  its action (``recsys_retrain.schedule.plot.mark_events``; no text on the curves);
* ``served.png``: NDCG@10 per week of the served model beside two baselines refit each
  week (recent popularity, EASE), on the same users;
* ``drift.png``: every drift signal per window against its calibrated threshold,
  drifted windows in red, and the verdict's severity;
* ``quality.png``: NDCG@10 of the serving champion and of each challenger over time,
  promotions, reverts and injected events marked;
* ``profile.png``: the data profile over time (volume, popularity skew, churn, ratings).

The page (``recsys_retrain.report_page``) draws the first two as interactive plotly
figures, each event's detail in its hover text and a table, and embeds the others as
data URIs; plotly.js is inline, so it opens offline from anywhere. ``log_report`` logs
page, PNGs and extras to an MLflow run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_retrain.io import write_text, write_with
from recsys_retrain.report_page import SERVED_SERIES, html_page, served_points, training_runs

PROFILE_FIELDS = (
    ("interactions", "interactions"), ("users", "active users"), ("items", "active items"),
    ("gini", "popularity Gini"), ("long_tail_share", "long-tail share"), ("new_user_rate", "new-user rate"),
    ("new_item_rate", "new-item rate"), ("rating_mean", "mean rating"),
)
SEVERITY = {"none": 0, "minor": 1, "major": 2}


@dataclass(frozen=True)
class Report:
    """Where the report went: the HTML page and its PNG figures."""

    html: Path
    figures: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "figures": [str(p) for p in self.figures]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(Path(d["html"]), tuple(Path(p) for p in d["figures"]))


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(runs_dir: Path, since: Any = None, until: Any = None) -> list[dict[str, Any]]:
    """One record per cycle folder, oldest window first: its start and every JSON file the cycle wrote.

    ``since``/``until`` keep the windows inside ``[since, until)`` (None: no bound).
    """
    cycles = []
    for folder in sorted(p for p in Path(runs_dir).glob("*-*") if p.is_dir()):
        try:
            start = pd.Timestamp(folder.name.split("-")[0], tz="UTC")
            end = pd.Timestamp(folder.name.split("-")[1], tz="UTC")
        except (ValueError, IndexError):
            continue
        if (since is not None and start < pd.Timestamp(since)) or (until is not None and end > pd.Timestamp(until)):
            continue
        drift = _read(folder / "drift" / "drift.json") or {}
        cycles.append({
            "name": folder.name,
            "start": start,
            "profile": _read(folder / "profile.json"),
            "drift": drift.get("verdict"),
            "summary": _read(folder / "summary.json"),
            "monitor": _read(folder / "monitor.json"),
            "served": _read(folder / "served.json"),
            "trace": _read(folder / "model" / "trace.json"),
        })
    return cycles


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dates(axes) -> None:
    """Few, short date ticks (a 30-week x axis would print every week otherwise)."""
    import matplotlib.dates as mdates

    for ax in axes:
        locator = mdates.AutoDateLocator(maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _save(fig, path: Path) -> Path:
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        _plt().close(fig)


def training_plot(cycles: list[dict[str, Any]]):
    """The figure of :func:`training_figure`: one panel per trained model, events as markers, no text on the curves."""
    from recsys_retrain.schedule.plot import mark_events, rate_axis

    plt = _plt()
    runs = training_runs(cycles)
    fig, axes = plt.subplots(max(len(runs), 1), 1, figsize=(10, 2.6 * max(len(runs), 1)), squeeze=False)
    if not runs:
        axes[0, 0].text(0.5, 0.5, "no trained models in these cycles", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, c in zip(axes[:, 0], runs):
        steps = c["trace"]["steps"]
        loss = ax.plot(steps["step"], steps["loss"], lw=0.6, color="tab:grey", label="loss")
        ax.set_ylabel("loss")
        events = mark_events(ax, c["trace"])
        lr = ax.twinx()
        dense = lr.plot(steps["step"], steps["dense_lr"], color="tab:blue", lw=1, label="dense lr")
        sparse = lr.plot(steps["step"], steps["sparse_lr"], color="tab:orange", lw=1, label="sparse lr")
        rate_axis(lr, steps)
        lr.set_ylabel("learning rate", fontsize=8)
        ax.set_title(f"model of window {c['start']:%Y-%m-%d}: {len(c['trace']['events'])} scheduler events", fontsize=9)
        lr.legend(handles=[*loss, *dense, *sparse, *events], fontsize=6, loc="upper right", ncol=4)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig


def training_figure(cycles: list[dict[str, Any]], path: Path) -> Path:
    """Loss per step and the two learning rates of each trained model, every scheduler event a marker on the loss."""
    return _save(training_plot(cycles), path)


def served_figure(cycles: list[dict[str, Any]], path: Path) -> Path:
    """NDCG@10 per week of the served model beside recent popularity and EASE, refit each week, on the same users."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    points = served_points(cycles)
    for key, name, colour in SERVED_SERIES:
        xy = [(start, s[key]) for start, s in points if s.get(key) is not None]
        if xy:
            ax.plot(*zip(*xy), "-o", ms=3, lw=1.2, color=colour, label=name)
    if not points:
        ax.text(0.5, 0.5, "no week was scored", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8, loc="best")
    ax.set_ylabel("NDCG@10, same users")
    ax.set_title("served model against fresh baselines, per week", fontsize=10)
    _dates([ax])
    fig.tight_layout()
    return _save(fig, path)


def drift_figure(cycles: list[dict[str, Any]], path: Path) -> Path:
    """Each signal's value per window against its threshold (drifted in red), and the severity per window."""
    plt = _plt()
    checked = [c for c in cycles if c["drift"]]
    names = list(dict.fromkeys(s["name"] for c in checked for s in c["drift"]["signals"]))
    cols = 4
    rows = (len(names) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False, sharex=True)
    flat = list(axes.flat)
    for ax, name in zip(flat, names):
        points = [(c["start"], s) for c in checked for s in c["drift"]["signals"] if s["name"] == name and s["tested"]]
        if points:
            x = [p[0] for p in points]
            ax.plot(x, [p[1]["value"] for p in points], "o-", ms=3, lw=1, color="tab:blue", label="value")
            ax.plot(x, [p[1]["threshold"] for p in points], "--", lw=1, color="tab:grey", label="threshold")
            hot = [p for p in points if p[1]["drifted"]]
            ax.plot([p[0] for p in hot], [p[1]["value"] for p in hot], "o", color="tab:red", ms=6, label="drifted")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    sev = flat[len(names)]
    sev.bar([c["start"] for c in checked], [SEVERITY.get(c["drift"]["severity"], 0) for c in checked], width=5,
            color=["tab:red" if c["drift"]["severity"] == "major" else "tab:orange" for c in checked])
    sev.set_yticks([0, 1, 2], ["none", "minor", "major"], fontsize=7)
    sev.set_title("severity", fontsize=9)
    for ax in flat[len(names) + 1:]:
        ax.set_axis_off()
    if names:
        flat[0].legend(fontsize=6)
    _dates(flat)
    fig.suptitle("drift signals per window against their calibrated thresholds", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def quality_figure(cycles: list[dict[str, Any]], weeks: list[dict[str, Any]] | None, path: Path) -> Path:
    """NDCG@10 of the serving champion and of each challenger per window, with promotions, reverts and injections."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    served = [(c["start"], c["served"]["ndcg"]) for c in cycles if c["served"] and c["served"].get("ndcg") is not None]
    gated = [(c["start"], c["summary"]) for c in cycles if c["summary"]]
    if served:
        ax.plot(*zip(*served), "-o", ms=3, color="tab:blue", label="champion (serving) NDCG@10")
    if gated:
        ax.plot([g[0] for g in gated], [g[1]["challenger_ndcg"] for g in gated], "s", color="tab:orange",
                label="challenger NDCG@10")
    for start, summary in gated:
        if summary["promoted"]:
            ax.axvline(start, color="tab:green", lw=1.2)
            ax.annotate(f"promote v{summary['version']}", (start, 0.98), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=7, va="top", ha="right", color="tab:green")
    for c in cycles:
        if c["monitor"] and c["monitor"].get("reverted"):
            ax.axvline(c["start"], color="tab:red", lw=1.5)
            ax.annotate(f"revert v{c['monitor']['champion_version']}", (c["start"], 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=7, va="bottom", ha="right", color="tab:red")
    for w in weeks or []:
        for what in w.get("injected", ()):
            start = pd.Timestamp(w["window"].split("/")[0])
            ax.axvline(start, color="tab:purple", lw=1, ls=":")
            ax.annotate(f"injected {what}", (start, 0.5), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        va="center", ha="left", color="tab:purple")
    ax.set_ylabel("NDCG@10 on the window")
    ax.set_title("serving champion and challengers over time", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    _dates([ax])
    fig.tight_layout()
    return _save(fig, path)


def profile_figure(cycles: list[dict[str, Any]], path: Path) -> Path:
    """The window's data profile over time, one panel per field."""
    plt = _plt()
    profiled = [c for c in cycles if c["profile"]]
    fig, axes = plt.subplots(2, 4, figsize=(12, 4.8), sharex=True)
    for ax, (key, label) in zip(axes.flat, PROFILE_FIELDS):
        points = [(c["start"], c["profile"].get(key)) for c in profiled if c["profile"].get(key) is not None]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, lw=1)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    _dates(axes.flat)
    fig.suptitle("data profile of each window", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def build_report(
    runs_dir: Path,
    out_dir: Path,
    alias_moves: list[dict[str, Any]] = (),
    weeks: list[dict[str, Any]] | None = None,
    title: str = "Drift-aware retraining: timeline report",
    since: Any = None,
    until: Any = None,
    week_table: bool = False,
) -> Report:
    """Draws the PNG figures from the cycle folders and writes ``report.html`` beside them.

    The page shows the served-vs-baselines panel and the training curves as
    interactive figures (``recsys_retrain.report_page``) and embeds the other PNGs;
    ``training.png`` and ``served.png`` are their still versions, for MLflow.

    Args:
        runs_dir: the folder of cycle folders (``settings.runs_dir``).
        out_dir: where ``report.html`` and the PNGs go (created).
        alias_moves: ``AliasMove.to_dict()`` of the registry's history, for the table.
        weeks: ``WeekResult.to_dict()`` of a replay (or the monitoring runs' weeks), to mark injected events.
        since, until: keep the cycle folders of windows inside ``[since, until)``.
        week_table: the windows table is one row per week of ``weeks`` (``report_page.week_rows``),
            not one per cycle folder.

    Returns:
        The Report (paths of the page and the figures).

    Example:
        >>> report = build_report(settings.runs_dir, settings.home / "report")  # doctest: +SKIP
        >>> report.html.name  # doctest: +SKIP
        'report.html'
    """
    cycles = collect(runs_dir, since, until)
    out_dir = Path(out_dir)
    stills = [training_figure(cycles, out_dir / "training.png"), served_figure(cycles, out_dir / "served.png")]
    embedded = [
        (drift_figure(cycles, out_dir / "drift.png"), "Drift signals per window against their calibrated thresholds."),
        (quality_figure(cycles, weeks, out_dir / "quality.png"), "NDCG@10 of the serving champion and of the "
         "challengers; green: promotions, red: reverts, purple: injected events."),
        (profile_figure(cycles, out_dir / "profile.png"), "Data profile of each window."),
    ]
    page = out_dir / "report.html"
    write_text(html_page(title, embedded, cycles, list(alias_moves), list(weeks or []) if week_table else None), page)
    return Report(page, (*stills, *(p for p, _ in embedded)))


def log_report(settings, report: Report, extra: dict[str, Path] | None = None, metrics: dict[str, float] | None = None,
               run_name: str = "timeline report") -> str:
    """Logs the page, its PNGs and ``extra`` files to a new run in the model's MLflow experiment; returns the run id.

    The run sits beside the candidates' runs (same experiment, same artifact store),
    tagged ``report=timeline``.
    """
    import mlflow

    from recsys_retrain.registry.client import configure

    experiment_id = configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={"report": "timeline"}) as run:
        mlflow.log_artifact(str(report.html), "report")
        for fig in report.figures:
            mlflow.log_artifact(str(fig), "report")
        for name, path in (extra or {}).items():
            mlflow.log_artifact(str(path))
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    return run.info.run_id
