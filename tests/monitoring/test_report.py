"""recsys_retrain.monitoring.report and ``retrain report``: the demo's page, rebuilt from what production logged."""

from __future__ import annotations

import sys

import pytest

from recsys_retrain import cli
from recsys_retrain.report_page import week_rows
from recsys_retrain.settings import get_settings
from recsys_retrain.timeline import week_result
from tests.monitoring.conftest import folder, window


@pytest.fixture
def home_env(weeks_logged, monkeypatch):
    """The CLI's settings (read from the environment) on the logged weeks' home."""
    monkeypatch.setenv("RETRAIN_HOME", str(weeks_logged.home))
    monkeypatch.setenv("RETRAIN_DATA_ROOT", str(weeks_logged.home.parent))
    get_settings.cache_clear()
    yield weeks_logged
    get_settings.cache_clear()


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["retrain", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code


def test_retrain_report_gives_the_demo_rows_for_the_same_weeks(home_env, monkeypatch, capsys):
    settings = home_env
    assert run_cli(monkeypatch, "report", "--from", "1998-01-12", "--to", "1998-01-26") in (0, None)
    out = capsys.readouterr().out
    page = (settings.home / "report" / "report.html").read_text()
    demo = [week_result(folder(settings, i), window(i), "drift" if i == 1 else None, [], {}).to_dict() for i in (1, 2)]
    for row in week_rows(demo):  # the demo's rows (from the cycle folders), cell by cell on the page built from MLflow
        assert "<tr>" + "".join(f"<td>{'' if v is None else v}</td>" for v in row) + "</tr>" in page
    assert "1998-01-05" not in page.split("<h2>Windows</h2>")[1].split("</table>")[0]  # outside --from
    assert "1998-01-12" in out and "1998-01-19" in out and "report.html" in out


@pytest.mark.parametrize(("args", "message"), [
    (("--from", "last tuesday"), "--from 'last tuesday' is not a date"),
    (("--from", "1998-02-01", "--to", "1998-01-01"), "--to 1998-01-01 is not after --from 1998-02-01"),
])
def test_bad_dates_fail_with_one_line_and_status_2(home_env, monkeypatch, capsys, args, message):
    assert run_cli(monkeypatch, "report", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
