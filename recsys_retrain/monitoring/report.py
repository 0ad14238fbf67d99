"""The timeline report rebuilt from what production logged: ``retrain report``, the monitor's refresh, the demo.

:func:`production_report` reads the monitoring runs in MLflow (one per DAG run:
``recsys_retrain.monitoring.runs``), the registry's alias history and the cycle folders
(training traces, profiles, drift verdicts, served quality), and draws the same page
the demo shows (``recsys_retrain.report.build_report``), with one table row per week.
The demo calls it too, after its replay, so a team that runs the DAGs gets the page the
demo draws, from the same code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings


def parse_date(value: str | None, option: str):
    """A date option as a UTC timestamp; a one-line PipelineError naming the option when it is not a date."""
    from recsys_retrain.io import utc

    if value is None:
        return None
    try:
        return utc(value)
    except (ValueError, TypeError):
        raise PipelineError(f"{option} {value!r} is not a date (YYYY-MM-DD)") from None


def production_report(
    settings: Settings,
    start: str | None = None,
    end: str | None = None,
    out_dir: Path | None = None,
    injected: dict[str, list[str]] | None = None,
    title: str = "Drift-aware retraining: timeline report",
) -> dict[str, Any]:
    """Writes ``report.html`` (and its PNGs) for the windows inside ``[start, end)`` from the production records.

    Args:
        settings: where MLflow, the registry and the cycle folders are.
        start, end: dates bounding the windows (None: unbounded).
        out_dir: where the page goes; default ``settings.report_dir`` (``<home>/report``).
        injected: window -> injected events (the demo's markers); production has none.

    Returns:
        ``html`` (the page), ``figures``, ``weeks`` (one dict per week, from MLflow),
        ``rows`` (the page's windows table) and ``seconds``.
    """
    from recsys_retrain.monitoring.runs import search, weeks as weeks_of
    from recsys_retrain.registry.aliases import history
    from recsys_retrain.report import build_report
    from recsys_retrain.report_page import week_rows

    started = time.perf_counter()
    since, until = parse_date(start, "--from"), parse_date(end, "--to")
    if since is not None and until is not None and until <= since:
        raise PipelineError(f"--to {end} is not after --from {start}")
    weeks = weeks_of(search(settings, since, until))
    for w in weeks:
        w["injected"] = list((injected or {}).get(w["window"], ()))
    moves = [m.to_dict() for m in history(settings)]
    report = build_report(settings.runs_dir, Path(out_dir or settings.report_dir), alias_moves=moves, weeks=weeks,
                          title=title, since=since, until=until, week_table=True)
    return {"html": str(report.html), "figures": [str(p) for p in report.figures], "weeks": weeks,
            "rows": week_rows(weeks), "seconds": round(time.perf_counter() - started, 2)}
