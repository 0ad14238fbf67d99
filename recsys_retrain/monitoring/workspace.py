"""The local Evidently workspace: one project per model, one snapshot per drift check, panels over time.

Each drift check (``cycle.drift``) adds its snapshot (``recsys_retrain.drift.evidently_metrics``:
the calibrated signals and the verdict as tests), stamped with the window's end, to the
project ``<model_name> drift`` under ``<home>/evidently``. A re-run for the same
window replaces that window's snapshot, so the UI shows one point per week. The
project's dashboard draws the severity level and each signal's calibrated value
against its threshold. Open it with::

    evidently ui --workspace .retrain/evidently --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import os
import socket
import subprocess  # nosec B404  # starts this environment's own evidently CLI
import sys
import time
from pathlib import Path
from typing import Any

from recsys_retrain.io import file_lock
from recsys_retrain.settings import Settings

PANEL_SIGNALS = ("rating", "item_popularity_decile", "top_items_share", "new_item_share", "rising_item_share",
                 "new_user_share", "hour_of_day", "day_of_week", "item_release_year", "user_activity", "session_pace",
                 "user_age", "genre", "prediction_score")


def project_name(settings: Settings) -> str:
    return f"{settings.model_name} drift"


def open_workspace(settings: Settings):
    """The workspace (created on first use); telemetry off, as the machines it runs on may have no network."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently.ui.workspace import Workspace

    path = Path(settings.evidently_workspace)
    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def project(settings: Settings, ws=None):
    """The model's project, with its dashboard, created on first use."""
    ws = ws or open_workspace(settings)
    found = ws.search_project(project_name(settings))
    if found:
        return found[0]
    created = ws.create_project(project_name(settings),
                                description="Weekly drift checks: calibrated signals against their thresholds, the verdict as tests")
    add_panels(ws, created)
    return created


def add_panels(ws, proj) -> None:
    """The dashboard, saved once: the severity level over time, then each signal's calibrated value beside its threshold.

    Built as one model: ``ProjectDashboard.add_panel`` with a named tab lists the panel
    twice in that tab (evidently 0.7.23).
    """
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import DashboardPanelPlot

    panels = [DashboardPanelPlot(
        title="drift verdict", subtitle="severity level: 0 none, 1 minor, 2 major (the test: level == 0)", size="full",
        values=[PanelMetric(legend="severity", metric="DriftVerdict")], plot_params={"plot_type": "bar"})]
    panels += [DashboardPanelPlot(
        title=name, subtitle="calibrated statistic against its calibrated threshold", size="half",
        values=[PanelMetric(legend=q, metric="CalibratedSignal", metric_labels={"signal": name, "quantity": q})
                for q in ("value", "threshold")],
        plot_params={"plot_type": "line"}) for name in PANEL_SIGNALS]
    ws.save_dashboard(proj.id, DashboardModel(tabs=[DashboardTabModel(title="drift", panels=[p.id for p in panels])],
                                              panels=panels))


def add_check(settings: Settings, verdict: dict[str, Any], categorical: dict[str, bool], window: str) -> str:
    """Adds the check of ``window`` (``start/end``) as a snapshot, replacing an earlier one of the same window; returns its id."""
    from recsys_retrain.drift.evidently_metrics import run_snapshot
    from recsys_retrain.io import utc

    end = utc(window.split("/")[-1]).tz_convert(None).to_pydatetime()
    snapshot = run_snapshot(verdict, categorical, window, end)
    with file_lock(Path(settings.evidently_workspace) / ".lock"):  # two DAGs may check the same week together
        ws = open_workspace(settings)
        proj = project(settings, ws)
        for snapshot_id in ws.list_runs(proj.id):
            old = ws.get_run(proj.id, snapshot_id)
            if old is not None and old.metadata.get("window") == window:
                ws.delete_run(proj.id, snapshot_id)
        return str(ws.add_run(proj.id, snapshot, include_data=False).id)


def snapshots(settings: Settings) -> list[Any]:
    """The project's snapshots (``SnapshotModel``), oldest window first."""
    ws = open_workspace(settings)
    found = ws.search_project(project_name(settings))
    if not found:
        return []
    runs = [ws.get_run(found[0].id, sid) for sid in ws.list_runs(found[0].id)]
    return sorted((r for r in runs if r is not None), key=lambda r: r.timestamp)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_ui(settings: Settings, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 60.0):
    """Starts ``evidently ui`` on the workspace; returns ``(process, base_url)`` once it answers ``/api/projects``.

    The caller stops the process (``process.terminate()``). Raises RuntimeError with the
    UI's last output when it does not answer in ``timeout_s``.
    """
    import urllib.request

    port = port or free_port(host)
    cli = Path(sys.executable).with_name("evidently")
    process = subprocess.Popen(  # nosec B603  # fixed argument list
        [str(cli), "ui", "--workspace", str(Path(settings.evidently_workspace).resolve()), "--host", host, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "DO_NOT_TRACK": "1"},
    )
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/api/projects", timeout=2) as response:  # nosec B310  # our own local UI
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.3)
    process.terminate()
    output = process.communicate(timeout=10)[0].decode(errors="replace")[-2000:]
    raise RuntimeError(f"evidently ui did not answer on {url} within {timeout_s:.0f} s: {output}")


def ui_projects(url: str) -> list[dict[str, Any]]:
    """The project list the UI serves (``GET /api/projects``)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/projects", timeout=10) as response:  # nosec B310  # our own local UI
        return json.loads(response.read())
