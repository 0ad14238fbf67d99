"""Command line: ``retrain demo``, ``ingest``, ``profile``, ``drift``, ``backtest``, ``report``, ``recommend``, ``history``, ``promote``, ``revert``.

Errors the user can act on (missing files, bad columns, too many bad rows) print
one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from recsys_retrain.airflow_local import migrate_airflow_db, quiet_libraries
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 110)


SYNTHETIC = "synthetic:"  # a --source of this prefix names a generated log (recsys_retrain.synthetic.parse_size)
SOURCE_HELP = ("Interaction data; default MovieLens-100K. synthetic:SIZE generates a log instead (SIZE: ml100k, S1, S2, "
               "S3 or EVENTS,USERS,ITEMS[,DAYS]; recsys_retrain.synthetic), kept under the cache folder.")


def checked_path(path: Path | None, settings: Settings, option: str) -> Path | None:
    """A path option resolved inside the data root (``recsys_retrain.paths``); None and ``synthetic:SIZE`` stay as they are."""
    from recsys_retrain.paths import user_path

    if path is None or str(path).startswith(SYNTHETIC):
        return path
    return user_path(path, settings, option)


def ingest_source(settings: Settings, source: Path | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Loads the interaction data and writes it into the Feast repository; returns its time span."""
    from recsys_retrain.data.ingest import bootstrap_feature_repo

    raw = load_source(settings, source)
    bootstrap_feature_repo(raw, settings.feature_repo)
    return raw.interactions["timestamp"].min(), raw.interactions["timestamp"].max()


def reset_state(settings: Settings) -> None:
    """Removes what earlier cycles left under home, so a replay starts with no champion.

    A champion trained on later data would otherwise be judged on windows it was
    trained on. The download cache and the Airflow home are kept.
    """
    for path in (settings.runs_dir, settings.artifact_root, settings.home / "mlflow.db"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def load_source(settings: Settings, source: Path | None):
    """The interaction data as RawData: MovieLens-100K (or a GroupLens folder), a plain log file, or ``synthetic:SIZE``."""
    from recsys_retrain.data.load import RawData, load_interactions, load_movielens

    source = source or settings.data.source
    if source is not None and str(source).startswith(SYNTHETIC):
        return synthetic_source(settings, str(source))
    if source is None or source.is_dir():
        return load_movielens(settings.cache_dir, source)
    return RawData(load_interactions(source), pd.DataFrame(), pd.DataFrame())


def synthetic_source(settings: Settings, spec: str):
    """The log ``synthetic:SIZE`` names, generated once into ``cache_dir/synthetic/SIZE`` and read from there after."""
    from recsys_retrain.synthetic import load_synthetic, parse_size, synthesize

    try:
        config = parse_size(spec)
    except ValueError as exc:
        raise PipelineError(f"--source {spec}: {exc}") from None
    folder = settings.cache_dir / "synthetic" / spec[len(SYNTHETIC):].replace(",", "_")
    truth = folder / "truth.json"
    if not truth.exists() or json.loads(truth.read_text()).get("config") != json.loads(json.dumps(config.to_dict())):
        console.print(f"generating the synthetic log {spec} into {folder}")
        synthesize(config, folder)
    return load_synthetic(folder)


def timeline_table(weeks: list) -> Table:
    """The replay's weeks: drift verdict, who trained, what the gate and the monitor decided, what was injected."""
    table = Table(title="Timeline replay (NDCG@10 on each week, full ranking)")
    for col in ("week", "rows", "drift", "trained", "serving", "challenger", "decision", "monitor", "injected"):
        table.add_column(col, no_wrap=True)
    for w in weeks:
        served = "—" if w.served_ndcg is None else f"v{w.served_version} {w.served_ndcg:.4f}"
        challenger = "—" if w.challenger_ndcg is None else f"{w.challenger_ndcg:.4f}"
        decision = "" if w.version is None else f"{'promote' if w.promoted else 'reject'} v{w.version}"
        if w.promoted and w.refit_version:
            decision += f" (refit v{w.refit_version} serves)"
        table.add_row(
            str(pd.Timestamp(w.window.split("/")[0]).date()), str(w.rows), w.drift, w.trained_by or "", served,
            challenger, decision, "revert" if w.reverted else "", ", ".join(w.injected),
        )
    return table


def ingest_events(settings: Settings, events: Path, batch_days: int = 0) -> dict[str, int]:
    """Appends a batch log to the Feast repository with a progress bar; returns the totals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from recsys_retrain.data.ingest import ingest as ingest_batch, split_batches

    from recsys_retrain.data.load import read_log

    raw = read_log(events)
    totals = {"rows": 0, "added": 0, "already_stored": 0, "quarantined": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("ingest", total=len(raw))
        for batch in split_batches(raw, batch_days):
            result = ingest_batch(
                batch, settings.feature_repo, settings.data,
                progress=lambda step: bar.update(task, description=f"ingest: {step}"),
            )
            bar.advance(task, len(batch))
            for key in totals:
                totals[key] += getattr(result, key)
            if result.quarantine_path:
                console.print(f"quarantined {result.quarantined} row(s) to {result.quarantine_path}")
    return totals


@app.command()
def ingest(
    source: Annotated[
        Optional[Path],
        typer.Option(help="Rebuild the repository from this log (.parquet/.csv), GroupLens ml-100k folder or "
                     "synthetic:SIZE (see demo --source); default MovieLens-100K."),
    ] = None,
    events: Annotated[
        Optional[Path],
        typer.Option(help="Append this batch (.parquet/.csv): validated, de-duplicated, features updated, online store filled."),
    ] = None,
    batch_days: Annotated[int, typer.Option(min=0, help="With --events: ingest in batches of this many days (0: one batch).")] = 0,
) -> None:
    """Load interactions into the Feast repository: rebuild it (--source) or append new events (--events)."""
    settings = get_settings()
    source, events = checked_path(source, settings, "--source"), checked_path(events, settings, "--events")
    if events is None:
        first, last = ingest_source(settings, source)
        console.print(f"ingested interactions {first} .. {last} into {settings.feature_repo}")
        return
    if source is not None:
        raise PipelineError("ingest: give --source (rebuild) or --events (append), not both")
    quiet_libraries()
    t = ingest_events(settings, events, batch_days)
    console.print(
        f"{events.name}: {t['rows']} rows, {t['added']} added, {t['already_stored']} already stored, "
        f"{t['quarantined']} quarantined, into {settings.feature_repo}"
    )


@app.command()
def profile(
    from_: Annotated[str, typer.Option("--from", help="Window start, inclusive (e.g. 1998-03-30; UTC).")],
    to: Annotated[str, typer.Option("--to", help="Window end, exclusive (e.g. 1998-04-06; UTC).")],
    reference_days: Annotated[
        Optional[int],
        typer.Option(min=1, help="Days before --from that new-user/item rates compare with; default drift.reference_days."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON instead of a table.")] = False,
) -> None:
    """Profile the stored interactions of [FROM, TO): sparsity, popularity skew, churn, ratings."""
    from recsys_retrain.profile import profile_window

    settings = get_settings()
    days = reference_days or settings.drift.reference_days
    p = profile_window(settings.feature_repo, from_, to, days).to_dict()
    if as_json:
        console.print_json(json.dumps(p))
        return
    table = Table(title=f"Data profile {from_} .. {to} (reference: {days} days before)")
    table.add_column("field", no_wrap=True)
    table.add_column("value", no_wrap=True)
    for key, value in p.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k}={v:g}" for k, v in value.items())
        else:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    console.print(table)


@app.command()
def demo(
    weeks: Annotated[
        Optional[int], typer.Option(min=1, help="Weekly windows to replay; default: every week to the end of the data.")
    ] = None,
    start: Annotated[str, typer.Option(help="First window's start (YYYY-MM-DD); the store starts with the data before it.")]
    = "1997-10-06",
    every: Annotated[int, typer.Option(min=0, help="Scheduled retrain every this many weeks (the first week always trains).")]
    = 8,
    retrain_on: Annotated[str, typer.Option(help="Drift severity at which drift_watch retrains: minor or major.")] = "major",
    drift_at: Annotated[str, typer.Option(help="Week start (YYYY-MM-DD) whose events get an injected drift; 'none': no drift event.")]
    = "1998-01-12",
    bad_model_at: Annotated[
        str, typer.Option(help="Week start after which a bad model is promoted past the gate; 'none': no bad model.")
    ] = "1998-02-16",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Training epochs budget of each retrain; default train.epochs.")]
    = None,
    source: Annotated[Optional[Path], typer.Option(help=SOURCE_HELP)] = None,
    fresh: Annotated[
        bool, typer.Option(help="Replay from scratch: remove earlier cycle folders and the MLflow store under home.")
    ] = True,
) -> None:
    """Replay the interaction timeline week by week through the DAGs (ingest, monitor, drift watch, scheduled retrain).

    Ends with a table of every week and the path of the HTML report (also logged to MLflow).
    """
    from recsys_retrain.paths import demo_may_reset
    from recsys_retrain.timeline import TimelineConfig, replay

    quiet_libraries()
    settings = get_settings()
    source = checked_path(source, settings, "--source")
    config = TimelineConfig(
        start=start, weeks=weeks, every=every, retrain_on=retrain_on, epochs=epochs,
        drift_at=None if drift_at.lower() == "none" else drift_at,
        bad_model_at=None if bad_model_at.lower() == "none" else bad_model_at,
    )
    if retrain_on not in ("minor", "major"):
        raise PipelineError(f"--retrain-on must be minor or major, got {retrain_on!r}")
    demo_may_reset(settings)
    if fresh:
        reset_state(settings)
    console.print(f"[bold]1/3[/] loading interactions; the Feast repository at {settings.feature_repo} starts before {start}")
    raw = load_source(settings, source)
    console.print(f"[bold]2/3[/] preparing Airflow at {settings.home / 'airflow'}")
    migrate_airflow_db(settings)
    console.print("[bold]3/3[/] replaying the weeks: ingest -> champion_monitor -> drift_watch -> retrain_scheduled")
    result = replay(settings, raw, config)
    console.print(timeline_table(list(result.weeks)))
    for w in result.weeks:
        if w.version is not None or w.reverted or w.injected:
            console.print(f"  {w.window.split('/')[0][:10]}: {w.reason}", highlight=False)
    console.print(f"{len(result.weeks)} weeks, {result.trains} trainings, {result.seconds:.0f} s")
    console.print(f"MLflow: {settings.mlflow_uri}  (model '{settings.model_name}', report run {result.mlflow_run_id})")
    console.print(f"Report: {Path(result.report).resolve()}")


@app.command()
def backtest(
    dataset: Annotated[str, typer.Option(help="movielens (the data, or --source) or synthetic (resampled from it, with "
                                         "a regime change and new items at known weeks).")] = "movielens",
    start: Annotated[Optional[str], typer.Option(help="First window's start (YYYY-MM-DD); it trains the first model. "
                                                 "Default: the dataset's (movielens 1997-10-06).")] = None,
    weeks: Annotated[Optional[int], typer.Option(min=2, help="Consecutive weekly windows (the first trains, the rest "
                                                 "are scored); default 21.")] = None,
    retrain_on: Annotated[str, typer.Option(help="Drift severity that triggers the drift policies: minor or major.")] = "minor",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs budget of every training; default train.epochs.")] = None,
    gate_policies: Annotated[Optional[list[str]], typer.Option("--gate-policy", help="Also replay the retraining "
                             "policies under this gate.policy (repeatable), on the same models.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Working folder for the cycles, backtest.json and backtest.png; default HOME/backtest.")]
    = None,
    source: Annotated[Optional[Path], typer.Option(help=SOURCE_HELP)] = None,
) -> None:
    """Replay weeks under each retraining policy and the weekly-refit baselines; served NDCG@10 against training compute."""
    from recsys_retrain import backtest as bt
    from recsys_retrain.cycle import with_overrides
    from recsys_retrain.paths import replaceable_folder

    quiet_libraries()
    settings = get_settings()
    if dataset not in bt.DATASETS:
        raise PipelineError(f"--dataset must be one of {', '.join(bt.DATASETS)}, got {dataset!r}")
    source, out = checked_path(source, settings, "--source"), checked_path(out, settings, "--out")
    root = replaceable_folder(out or settings.home / "backtest", settings, "--out")
    if root.exists():
        shutil.rmtree(root)
    raw, truth = bt.timeline(dataset, load_source(settings, source))
    s = with_overrides(settings, {"train": {"epochs": epochs}} if epochs else None)
    s = bt.feature_store(raw, root, s)
    console.print(f"feature store for the backtest at {s.feature_repo} (the whole timeline; pulls are point-in-time)")
    for name, event in truth.items():
        console.print(f"ground truth: {name} from {event['start'][:10]}", highlight=False)
    defaults = bt.DATASETS[dataset]
    starts = bt.window_starts(start or defaults["start"], weeks or defaults["weeks"])
    result = bt.backtest(s, starts, root, retrain_on=retrain_on, gate_policies=tuple(gate_policies or ()))
    summary = result.summary()
    table = Table(title=f"Policies over {len(starts) - 1} scored weeks from {starts[1].date()} (drift trigger: {retrain_on}, "
                        f"gate {result.gate_policy}, refit {result.refit})")
    for col in ("policy", "mean NDCG@10", "vs never [95% CI]", "vs recent pop [95% CI]", "retrains", "promotions",
                "train epochs", "train s", "staleness d"):
        table.add_column(col, no_wrap=True)

    def ci(c: dict | None) -> str:
        return "—" if c is None else f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"

    for name, row in summary.items():
        table.add_row(name, f"{row['mean_ndcg10']:.4f}", ci(row["ci_vs_never"]), ci(row["ci_vs_recent_pop"]), str(row["trains"]),
                      str(row["promotions"]), str(row["train_epochs"]), f"{row['train_s']:.1f}", f"{row['staleness_days']:.1f}")
    console.print(table)
    for gate_policy, rows in result.by_gate_policy.items():
        console.print(f"under gate {gate_policy}: " + ", ".join(f"{p.policy} {p.mean_ndcg10:.4f} ({p.promotions} promoted)"
                                                              for p in rows), highlight=False)
    console.print(f"drift per window: {' '.join(result.severities)}")
    console.print(f"{result.json_path}\n{result.plot_path}")


def parse_span(name: str, span: str) -> tuple[str, str]:
    """``T0:T1`` with plain dates, or ``T0..T1`` (also for datetimes, whose times hold colons)."""
    t0, sep, t1 = span.partition("..")
    if not sep:
        parts = span.split(":")
        t0, t1 = (parts[0], parts[1]) if len(parts) == 2 else ("", "")
    if not t0 or not t1:
        raise PipelineError(f"--{name} must be T0:T1 (dates) or T0..T1 (datetimes), got {span!r}")
    return t0, t1


@app.command()
def drift(
    reference: Annotated[str, typer.Option(help="Reference window T0:T1 (end exclusive).")],
    current: Annotated[str, typer.Option(help="Current window T2:T3 (end exclusive).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for drift.html/drift.json; default: no files.")] = None,
    champion: Annotated[
        bool, typer.Option(help="Also test the registry champion's scores on both windows (prediction drift).")
    ] = False,
) -> None:
    """Compare two windows of the feature store on the designed drift signals and print the verdict.

    A reference at least twice as long as the current window (four weeks for one) is
    needed for the new-item and new-user signals.
    """
    from recsys_retrain.data.store import pull_window
    from recsys_retrain.drift.check import champion_scorer, check_drift

    quiet_libraries()
    settings = get_settings()
    out = checked_path(out, settings, "--out")
    scorer = None
    if champion:
        from recsys_retrain.registry import candidates

        current_version = candidates.champion(settings)
        if current_version is None:
            raise PipelineError("--champion: the registry has no champion yet")
        model, why = candidates.try_load(settings, current_version.version)
        if model is None:
            raise PipelineError(f"--champion: version {current_version.version} cannot be loaded: {why}")
        scorer = champion_scorer(model)
    windows = [pull_window(settings.feature_repo, *parse_span(n, span)) for n, span in (("reference", reference), ("current", current))]
    report = check_drift(windows[0], windows[1], out, settings.drift, scorer)
    table = Table(title=f"Drift: {reference} vs {current} (family-wise alpha {report.alpha:g})")
    for col in ("signal", "method", "value", "threshold", "p", "users ref/cur", "drifted", "note"):
        table.add_column(col, no_wrap=col != "note")
    for sig in report.signals:
        shown = sig.tested
        table.add_row(
            sig.name, sig.method, f"{sig.value:.4f}" if shown else "—", f"{sig.threshold:.4f}" if shown else "—",
            f"{sig.p_value:.3f}" if shown else "—", f"{sig.n_reference}/{sig.n_current}",
            "[red]yes[/]" if sig.drifted else "no", sig.note,
        )
    console.print(table)
    colour = {"none": "green", "minor": "yellow", "major": "red"}[report.severity]
    console.print(f"verdict: [bold {colour}]{report.severity}[/]: {report.reason}")
    if report.html_path:
        console.print(f"report: {report.html_path}")


@app.command()
def report(
    start: Annotated[Optional[str], typer.Option("--from", help="First window start to include (YYYY-MM-DD); default: the first logged.")]
    = None,
    end: Annotated[Optional[str], typer.Option("--to", help="Last window end to include, exclusive (YYYY-MM-DD); default: the last.")]
    = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.html; default <home>/report.")] = None,
) -> None:
    """Build the timeline report from what the DAGs logged: MLflow monitoring runs, the registry history, cycle folders."""
    from recsys_retrain.monitoring.report import production_report
    from recsys_retrain.report_page import WEEK_HEADERS

    quiet_libraries()
    settings = get_settings()
    result = production_report(settings, start, end, checked_path(out, settings, "--out"))
    if not result["weeks"]:
        console.print(f"no monitoring runs in {settings.monitoring_experiment} for these dates; the page has no weeks")
    table = Table(title=f"Weeks logged by the DAGs ({settings.monitoring_experiment})")
    for col in WEEK_HEADERS:
        table.add_column(col, overflow="fold", no_wrap=col == "week", min_width=10 if col == "week" else None)
    for row in result["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"Report: {Path(result['html']).resolve()} ({result['seconds']:.1f} s)")


@app.command()
def promote(
    candidate: Annotated[int, typer.Option(help="Registered version to make champion; the current one becomes 'previous'.")],
    reason: Annotated[str, typer.Option(help="Why, kept in the alias history.")] = "manual promotion",
) -> None:
    """Promote a version by hand (refused for a reverted version)."""
    from recsys_retrain.registry import promotion

    moves = promotion.promote(get_settings(), candidate, reason=reason, actor="cli promote")
    console.print(f"v{candidate} is champion" + ("" if moves else " already"))


@app.command()
def revert(
    reason: Annotated[str, typer.Option(help="Why, tagged on the reverted version.")] = "manual revert",
) -> None:
    """Roll champion back to previous; the reverted version cannot return without new evidence."""
    from recsys_retrain.registry import promotion

    moves = promotion.revert(get_settings(), reason=reason, actor="cli revert")
    console.print("; ".join(f"{m.alias}: v{m.from_version} -> v{m.to_version}" for m in moves) or "nothing to revert")


@app.command()
def recommend(
    user: Annotated[list[int], typer.Option(help="User id; repeat for several users.")],
    k: Annotated[Optional[int], typer.Option(min=1, help="Items per user; default serve.k.")] = None,
    alias: Annotated[str, typer.Option(help="Alias (champion, challenger, previous) or version number to serve.")] = "champion",
    exclude_seen: Annotated[
        Optional[bool], typer.Option("--exclude-seen/--include-seen", help="Leave out items the user already had; default serve.exclude_seen.")
    ] = None,
) -> None:
    """Top-K items for users from a registered version, their features read from the Feast online store."""
    from recsys_retrain.serve.recommend import recommend_table

    settings = get_settings()
    version, frame = recommend_table(settings, user, k=k, alias=alias, exclude_seen=exclude_seen)
    table = Table(title=f"{settings.model_name} v{version} ({alias}): top-{frame['rank'].max()} per user")
    for col in ("user", "rank", "item", "title", "score", "source"):
        table.add_column(col, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(str(row.user_id), str(row.rank), str(row.item_id), row.title, f"{row.score:.4f}", row.source)
    console.print(table)


@app.command()
def history() -> None:
    """Show every alias move: when, who, from which version to which, why."""
    from recsys_retrain.registry import aliases

    table = Table(title="Alias history")
    for col in ("#", "when", "alias", "from", "to", "by", "why"):
        table.add_column(col, overflow="fold")
    for m in aliases.history(get_settings()):
        table.add_row(
            str(m.seq), m.at, m.alias, f"v{m.from_version}" if m.from_version else "—",
            f"v{m.to_version}" if m.to_version else "—", m.actor, m.reason,
        )
    console.print(table)


def main() -> None:
    try:
        app()
    except PipelineError as err:
        Console(stderr=True).print(f"error: {err}", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
