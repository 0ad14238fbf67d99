"""recsys_retrain.report: figures from cycle folders, one offline HTML page, checked in a real headless Chromium.

The cycle folders are written from the pipeline's own dataclasses (DataProfile,
DriftReport, RevertDecision) and a trace.json in the trainer's schema, so the test
exercises the same files a replay leaves, in a second instead of minutes.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import mlflow
import pytest

from recsys_retrain import report
from recsys_retrain.drift.verdict import DriftReport, SignalResult
from recsys_retrain.profile import DataProfile

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
START = ["19980105", "19980112", "19980119", "19980126"]


def trace(lr_cut_step: int) -> dict:
    steps = list(range(40))
    dense = [0.01 if s < lr_cut_step else 0.005 for s in steps]
    return {
        "steps": {"step": steps, "epoch": [s // 10 for s in steps], "loss": [7.0 - 0.02 * s for s in steps],
                  "dense_grad_norm": [1.0] * 40, "embedding_grad_norm": [0.5] * 40,
                  "dense_lr": dense, "sparse_lr": [0.05] * 40},
        "epochs": [{"epoch": e, "loss": 7.0 - 0.2 * e, "validation": 0.1 + 0.01 * e, "dense_lr": 0.01, "sparse_lr": 0.05}
                   for e in range(4)],
        "events": [{"step": lr_cut_step, "epoch": lr_cut_step // 10, "stage": "exploit", "action": "lr_down",
                    "trigger": "plateau", "value": 0.01, "threshold": 0.02, "changes": {"dense_lr": [0.01, 0.005]},
                    "reason": "validation flat for 2 epochs"}],
        "plan": None,
    }


def write_cycle(runs: Path, i: int) -> None:
    """One cycle folder as a replay leaves it: week ``i`` drifts on week 2, trains on weeks 0 and 2, reverts on 3."""
    start = START[i]
    folder = runs / f"{start}-{START[i + 1] if i + 1 < len(START) else '19980202'}"
    (folder / "drift").mkdir(parents=True)
    prof = DataProfile(start, None, 3000 + 100 * i, 400, 900, 0.01, 0.6 + 0.01 * i, 0.02, 0.2, 0.3, 0.1, 0.05, 3.5, 1.1, 430.0)
    (folder / "profile.json").write_text(json.dumps(prof.to_dict()))
    drifted = i == 2
    signals = tuple(
        SignalResult(name, "jensenshannon", 0.05 + (0.2 if drifted else 0.01 * i), 0.1, drifted, True, 300, 300)
        for name in ("rating", "genre", "item_popularity_decile")
    )
    verdict = DriftReport(signals, 1.0 if drifted else 0.0, "major" if drifted else "none", "r", 0.2, 0.5, 9000, 3000, "", "")
    (folder / "drift" / "drift.json").write_text(json.dumps({"verdict": verdict.to_dict()}))
    (folder / "served.json").write_text(json.dumps({"window": "w", "version": 1, "ndcg": 0.2 + 0.01 * i}))
    if i in (0, 2):
        (folder / "model").mkdir()
        (folder / "model" / "trace.json").write_text(json.dumps(trace(10 + 5 * i)))
        summary = {"window": "w", "rows_window": 3000, "drift": verdict.severity, "challenger_ndcg": 0.25,
                   "champion_ndcg": None, "ci": [0, 0], "version": i // 2 + 1, "promoted": True, "reason": "better"}
        (folder / "summary.json").write_text(json.dumps(summary))
    monitor = {"revert": i == 3, "reverted": i == 3, "champion_version": 2, "previous_version": 1, "consecutive": 2,
               "required": 2, "reason": "worse twice", "windows": []}
    (folder / "monitor.json").write_text(json.dumps(monitor))


@pytest.fixture
def built(tmp_path) -> report.Report:
    runs = tmp_path / "runs"
    for i in range(len(START)):
        write_cycle(runs, i)
    moves = [{"seq": 1, "alias": "champion", "from_version": None, "to_version": 1, "at": "t", "actor": "gate",
              "reason": "first <model>", "op": "promote", "evidence": ""}]
    weeks = [{"window": "1998-01-19T00:00:00+00:00/1998-01-26T00:00:00+00:00", "injected": ["drift"]}]
    return report.build_report(runs, tmp_path / "report", alias_moves=moves, weeks=weeks)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_report_writes_four_pngs_and_a_page_that_embeds_them(built):
    assert [p.name for p in built.figures] == ["training.png", "drift.png", "quality.png", "profile.png"]
    for fig in built.figures:
        width, height = png_size(fig)
        assert width > 300 and height > 200
    page = built.html.read_text()
    assert page.count('<img src="data:image/png;base64,') == 4
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert "first &lt;model&gt;" in page  # table cells are escaped
    assert page.count("<tr>") == 1 + 4 + 1 + 1  # header + four windows, header + one alias move


def test_collect_reads_every_cycle_file_in_window_order(built, tmp_path):
    cycles = report.collect(tmp_path / "runs")
    assert [c["name"][:8] for c in cycles] == START
    assert [bool(c["trace"]) for c in cycles] == [True, False, True, False]
    assert [c["drift"]["severity"] for c in cycles] == ["none", "none", "major", "none"]
    assert cycles[3]["monitor"]["reverted"]


def test_event_labels_name_the_action_trigger_and_changed_values():
    event = trace(10)["events"][0]
    assert report.event_label(event) == "lr_down (plateau): dense_lr 0.01->0.005"
    assert report.event_label({"action": "stage", "stage": "exploit", "trigger": "", "changes": {}}) == "stage exploit"


def test_an_empty_runs_folder_still_gives_a_complete_page(tmp_path):
    built = report.build_report(tmp_path / "nothing", tmp_path / "out")
    assert built.html.exists() and all(png_size(p)[0] > 0 for p in built.figures)


def test_log_report_puts_page_and_figures_on_an_mlflow_run(built, settings):
    run_id = report.log_report(settings, built, metrics={"weeks": 4})
    client = mlflow.MlflowClient(settings.mlflow_uri)
    names = sorted(a.path for a in client.list_artifacts(run_id, "report"))
    assert names == sorted(f"report/{p.name}" for p in (built.html, *built.figures))
    assert client.get_run(run_id).data.metrics["weeks"] == 4


def chromium():
    """Headless Chromium through the system chromedriver; a missing browser fails with the install line."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail("the report test needs Chromium: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(arg)
    return options, Service(str(CHROMEDRIVER))


def test_the_page_renders_every_figure_in_headless_chromium(built, tmp_path):
    from selenium import webdriver

    options, service = chromium()
    profile_dir = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(built.html.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);"
        )
        assert len(images) == 4
        for complete, width, height, alt in images:
            assert complete and width > 300 and height > 200, alt  # decoded: not a broken image
        broken = driver.execute_script("return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length;")
        assert broken == 0
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        width, height = png_size(shot)
        assert width >= 1000 and height >= 1000
    finally:
        driver.quit()
    shutil.rmtree(profile_dir, ignore_errors=True)
