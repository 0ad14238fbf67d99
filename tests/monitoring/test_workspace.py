"""recsys_retrain.monitoring.workspace: one snapshot per checked week in the model's project, served by ``evidently ui``."""

from __future__ import annotations

import pytest

from recsys_retrain.monitoring import workspace
from recsys_retrain.settings import Settings
from tests.monitoring.conftest import window

VERDICT = {"severity": "minor", "reason": "1 of 2 tested signals drifted", "drifted_share": 0.5, "signals": [
    {"name": "rating", "method": "wasserstein", "value": 0.3, "threshold": 0.2, "p_value": 0.001, "drifted": True, "tested": True},
    {"name": "genre", "method": "jensenshannon", "value": 0.05, "threshold": 0.1, "p_value": 0.4, "drifted": False, "tested": True},
]}


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> Settings:
    """Two weeks checked, the first one twice (a re-run)."""
    settings = Settings(home=tmp_path_factory.mktemp("evidently") / "home")
    for i in (0, 1, 0):
        workspace.add_check(settings, VERDICT, {"genre": True}, window(i))
    return settings


def test_each_checked_week_is_one_snapshot_of_the_model_project(checked):
    snaps = workspace.snapshots(checked)
    assert [s.metadata["window"] for s in snaps] == [window(0), window(1)]  # the re-run replaced its week's snapshot
    assert [s.timestamp.isoformat()[:10] for s in snaps] == ["1998-01-12", "1998-01-19"]  # stamped with the window's end
    assert "minor" in snaps[0].tags
    ws = workspace.open_workspace(checked)
    (project,) = ws.list_projects()
    assert project.name == "two_tower drift"
    dashboard = ws.get_dashboard(project.id)
    titles = [p.title for p in dashboard.panels]
    assert titles[0] == "drift verdict" and {"rating", "genre"} <= set(titles)
    assert all(len(tab.panels) == len(set(tab.panels)) for tab in dashboard.tabs)  # each panel once


@pytest.mark.slow
def test_evidently_ui_serves_the_project_list_on_a_local_port(checked):
    import json
    import urllib.request

    process, url = workspace.start_ui(checked, host="127.0.0.1")
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/api/projects", timeout=10) as response:  # a real HTTP request
            projects = json.loads(response.read())
        assert [p["name"] for p in projects] == ["two_tower drift"]
        with urllib.request.urlopen(f"{url}/api/v2/dashboards/{projects[0]['id']}", timeout=10) as response:
            assert len(json.loads(response.read())["panels"]) == 1 + len(workspace.PANEL_SIGNALS)
        series = {"series_filter": [{"tags": [], "metadata": {}, "metric": "evidently:metric_v2:CalibratedSignal",
                                     "metric_labels": {"signal": "rating", "quantity": q}} for q in ("value", "threshold")]}
        request = urllib.request.Request(f"{url}/api/v2/snapshots/{projects[0]['id']}/data_series_batch", method="POST",
                                         data=json.dumps(series).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # what a panel draws: one point per week
            drawn = json.loads(response.read())
        assert len(drawn["sources"]) == 2
        assert sorted(tuple(s["values"]) for s in drawn["series"]) == [(0.2, 0.2), (0.3, 0.3)]  # threshold, value
    finally:
        process.terminate()
        process.wait(timeout=30)
