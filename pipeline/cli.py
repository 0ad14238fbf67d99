"""Command line: ``retrain demo``, ``retrain ingest``, ``retrain run``.

Errors the user can act on (missing files, bad columns, too many bad rows) print
one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess  # nosec B404  # runs this venv's airflow with an argument list, no shell
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import PipelineError
from pipeline.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 110)
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"


def quiet_libraries() -> None:
    """Keeps library chatter (planner hints, deprecations) out of the user's terminal."""
    warnings.filterwarnings("ignore")
    logging.captureWarnings(False)
    for name in ("torchrec", "torch", "mlflow", "feast", "evidently", "alembic", "airflow", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def airflow_env(settings: Settings) -> None:
    """Points Airflow at a home under the pipeline's home, with this repo's dags folder."""
    home = (settings.home / "airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def migrate_airflow_db(settings: Settings) -> None:
    """``airflow db migrate`` once per Airflow home (it is idempotent, but takes seconds)."""
    airflow_env(settings)
    marker = Path(os.environ["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)  # nosec B603  # fixed args
    if done.returncode != 0:
        raise PipelineError(f"airflow db migrate failed: {done.stderr.strip().splitlines()[-1:]}")
    marker.touch()


def load_dag(name: str = "retrain"):
    """Imports a DAG file from the dags folder (it is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"dags.{name}", DAGS_FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def checked_path(path: Path | None, settings: Settings, option: str) -> Path | None:
    """A path option resolved inside the data root (``pipeline.paths``); None stays None."""
    from pipeline.paths import user_path

    return None if path is None else user_path(path, settings, option)


def ingest_source(settings: Settings, source: Path | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Loads the interaction data and writes it into the Feast repository; returns its time span."""
    from pipeline import data

    source = source or settings.data.source
    if source is None or source.is_dir():
        raw = data.load_movielens(settings.cache_dir, source)
    else:
        raw = data.RawData(data.load_interactions(source), pd.DataFrame(), pd.DataFrame())
    data.bootstrap_feature_repo(raw, settings.feature_repo)
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


def weekly_windows(first: pd.Timestamp, last: pd.Timestamp, weeks: int, start: str | None) -> list[pd.Timestamp]:
    """Window starts: from ``start``, or the last ``weeks`` complete Monday-aligned weeks."""
    if start:
        begin = pd.Timestamp(start, tz="UTC")
    else:
        last_monday = (last - timedelta(days=last.weekday())).normalize()
        begin = last_monday - timedelta(weeks=weeks)
    if begin <= first:
        raise PipelineError(f"window start {begin.date()} leaves no history before it (data begins {first.date()})")
    return [begin + timedelta(weeks=i) for i in range(weeks)]


def summary_table(summaries: list[dict]) -> Table:
    table = Table(title="Retraining cycles (NDCG@10 on each window, full ranking)")
    for col in ("window", "rows", "drift", "challenger", "champion", "decision"):
        table.add_column(col, no_wrap=True)
    for s in summaries:
        champion = "—" if s["champion_ndcg"] is None else f"{s['champion_ndcg']:.4f}"
        decision = f"promote v{s['version']}" if s["promoted"] else f"reject v{s['version']}"
        start, end = (pd.Timestamp(t).date() for t in s["window"].split("/"))
        table.add_row(f"{start}..{end}", str(s["rows_window"]), s["drift"], f"{s['challenger_ndcg']:.4f}", champion, decision)
    return table


def ingest_events(settings: Settings, events: Path, batch_days: int = 0) -> dict[str, int]:
    """Appends a batch log to the Feast repository with a progress bar; returns the totals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline import data

    raw = data.read_log(events)
    totals = {"rows": 0, "added": 0, "already_stored": 0, "quarantined": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("ingest", total=len(raw))
        for batch in data.split_batches(raw, batch_days):
            result = data.ingest(
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
        typer.Option(help="Rebuild the repository from this log (.parquet/.csv) or GroupLens ml-100k folder; default MovieLens-100K."),
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
    from pipeline.profile import profile_window

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
    weeks: Annotated[int, typer.Option(min=1, help="How many consecutive weekly windows to run.")] = 3,
    start: Annotated[Optional[str], typer.Option(help="First window's start (YYYY-MM-DD); default: the last full weeks.")] = None,
    source: Annotated[Optional[Path], typer.Option(help="Interaction data; default MovieLens-100K.")] = None,
    fresh: Annotated[
        bool, typer.Option(help="Replay from scratch: remove earlier cycle folders and the MLflow store under home.")
    ] = True,
) -> None:
    """Run the retraining DAG with dag.test() over consecutive weekly windows and print what it decided."""
    quiet_libraries()
    settings = get_settings()
    source = checked_path(source, settings, "--source")
    if fresh:
        reset_state(settings)
    console.print(f"[bold]1/3[/] ingesting data into the Feast repository at {settings.feature_repo}")
    first, last = ingest_source(settings, source)
    console.print(f"[bold]2/3[/] preparing Airflow at {settings.home / 'airflow'}")
    migrate_airflow_db(settings)
    dag = load_dag("retrain")
    quiet_libraries()  # again: importing Airflow installs its own warning and logging handlers
    summaries = []
    for i, begin in enumerate(weekly_windows(first, last, weeks, start), 1):
        end = begin + timedelta(weeks=1)
        console.print(f"[bold]3/3[/] cycle {i}/{weeks}: window {begin.date()} → {end.date()}")
        run = dag.test(logical_date=end.to_pydatetime())
        if str(run.state) != "success":
            raise PipelineError(f"DAG run for window {begin.date()} ended {run.state}; see the task logs above")
        summary_path = settings.runs_dir / f"{begin:%Y%m%d}-{end:%Y%m%d}" / "summary.json"
        summaries.append(json.loads(summary_path.read_text()))
    console.print(summary_table(summaries))
    for summary in summaries:
        verdict = "promoted" if summary["promoted"] else "rejected"
        console.print(f"  v{summary['version']} {verdict}: {summary['reason']}", highlight=False)
    console.print(f"MLflow: {settings.mlflow_uri}  (model '{settings.model_name}', alias 'champion')")
    console.print(f"Cycle folders: {settings.runs_dir.resolve()}")


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
) -> None:
    """Compare two windows of the feature store on the designed drift signals and print the verdict."""
    from pipeline.data import pull_window
    from pipeline.drift import check_drift

    quiet_libraries()
    settings = get_settings()
    out = checked_path(out, settings, "--out")
    windows = [pull_window(settings.feature_repo, *parse_span(n, span)) for n, span in (("reference", reference), ("current", current))]
    report = check_drift(windows[0], windows[1], out, settings.drift)
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
def promote(
    candidate: Annotated[int, typer.Option(help="Registered version to make champion; the current one becomes 'previous'.")],
    reason: Annotated[str, typer.Option(help="Why, kept in the alias history.")] = "manual promotion",
) -> None:
    """Promote a version by hand (refused for a reverted version)."""
    from pipeline import registry

    moves = registry.promote(get_settings(), candidate, reason=reason, actor="cli promote")
    console.print(f"v{candidate} is champion" + ("" if moves else " already"))


@app.command()
def revert(
    reason: Annotated[str, typer.Option(help="Why, tagged on the reverted version.")] = "manual revert",
) -> None:
    """Roll champion back to previous; the reverted version cannot return without new evidence."""
    from pipeline import registry

    moves = registry.revert(get_settings(), reason=reason, actor="cli revert")
    console.print("; ".join(f"{m.alias}: v{m.from_version} -> v{m.to_version}" for m in moves) or "nothing to revert")


@app.command()
def history() -> None:
    """Show every alias move: when, who, from which version to which, why."""
    from pipeline import registry

    table = Table(title="Alias history")
    for col in ("#", "when", "alias", "from", "to", "by", "why"):
        table.add_column(col, overflow="fold")
    for m in registry.history(get_settings()):
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
