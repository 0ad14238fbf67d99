"""recsys_retrain.report and report_page: figures from cycle folders, one offline HTML page, checked in headless Chromium.

The cycle folders are written from the pipeline's own dataclasses (DataProfile,
DriftReport, RevertDecision) and a trace.json in the trainer's schema, so the test
exercises the same files a replay leaves, in a second instead of minutes. In the
browser, the interactive figures are checked as a reader sees them: every text inside
its figure, no two texts on top of each other, every scheduler event a point that
answers a hover with its detail.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
from pathlib import Path

import mlflow
import pytest

from recsys_retrain import report, report_page
from recsys_retrain.drift.verdict import DriftReport, SignalResult
from recsys_retrain.profile import DataProfile
from recsys_retrain.schedule.plot import curves_figure

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
START = ["19980105", "19980112", "19980119", "19980126"]


def trace(lr_cut_step: int) -> dict:
    steps = list(range(40))
    dense = [0.01 if s < lr_cut_step else 0.005 for s in steps]
    return {
        "steps": {"step": steps, "epoch": [s // 10 for s in steps], "loss": [7.0 - 0.02 * s for s in steps],
                  "dense_grad_norm": [1.0] * 40, "embedding_grad_norm": [0.5] * 40,
                  "dense_lr": dense, "sparse_lr": [0.05 * 0.9**s for s in steps]},  # two decades: log ticks crowd
        "epochs": [{"epoch": e, "loss": 7.0 - 0.2 * e, "validation": 0.1 + 0.01 * e, "dense_lr": 0.01, "sparse_lr": 0.05}
                   for e in range(4)],
        "events": [  # as a run leaves them: the first stage at step 0, two decisions on one step, a rollback soon after
            {"step": 0, "epoch": 0, "stage": "explore", "action": "stage", "trigger": "start", "value": None,
             "threshold": None, "changes": {}, "reason": "first stage"},
            {"step": lr_cut_step, "epoch": lr_cut_step // 10, "stage": "exploit", "action": "lr_down",
             "trigger": "plateau", "value": 0.01, "threshold": 0.02, "changes": {"dense_lr": [0.01, 0.005]},
             "reason": "validation flat for 2 epochs"},
            {"step": lr_cut_step, "epoch": lr_cut_step // 10, "stage": "exploit", "action": "stage", "trigger": "plateau",
             "value": 0.01, "threshold": 0.02, "changes": {}, "reason": "explore -> exploit <after a plateau>"},
            {"step": lr_cut_step + 3, "epoch": (lr_cut_step + 3) // 10, "stage": "exploit", "action": "rollback",
             "trigger": "loss_spike", "value": 3.1, "threshold": 2.5, "changes": {"dense_lr": [0.005, 0.0025], "batch_size": [256.0, 512.0]},
             "reason": "the loss rose 3.1 standard deviations above its trend after the rate cut; the weights of step 13 are restored"},
        ],
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
    served = {"window": "w", "version": 1, "ndcg": 0.2 + 0.01 * i}
    if i > 0:  # the first week's file is as older replays wrote it: no baselines
        served |= {"recent_pop_ndcg": 0.22, "ease_ndcg": 0.24 - 0.02 * i, "users": 300 + i}
    (folder / "served.json").write_text(json.dumps(served))
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


def test_report_writes_the_pngs_and_a_page_with_plotly_inline_once(built):
    assert [p.name for p in built.figures] == ["training.png", "served.png", "drift.png", "quality.png", "profile.png"]
    for fig in built.figures:
        width, height = png_size(fig)
        assert width > 300 and height > 200
    page = built.html.read_text()
    assert page.count('<img src="data:image/png;base64,') == 3  # drift, quality, profile; the others are interactive
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\b(src|href)=["']?(https?:)?//""", page)  # opens offline
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1  # the library inline, once
    assert page.count('class="plotly-graph-div"') == 1 + 2  # the served panel, two training runs
    assert "first &lt;model&gt;" in page and "&lt;after a plateau&gt;" in page  # table cells are escaped
    served, events, windows, moves = 1 + 4, 2 * (1 + 4), 1 + 4, 1 + 1
    assert page.count("<tr>") == served + events + windows + moves
    assert "beat recent popularity on 1 of 3 and EASE on 2 of 3 weeks" in page
    serving = page.split("<h2>Serving the champion</h2>", 1)[1]  # one example per way, the README's commands
    assert "retrain recommend --user" in serving and "mlflow models serve -m models:/two_tower@champion" in serving
    assert "read_recommendations(" in serving


def test_collect_reads_every_cycle_file_in_window_order(built, tmp_path):
    cycles = report.collect(tmp_path / "runs")
    assert [c["name"][:8] for c in cycles] == START
    assert [bool(c["trace"]) for c in cycles] == [True, False, True, False]
    assert [c["drift"]["severity"] for c in cycles] == ["none", "none", "major", "none"]
    assert cycles[3]["monitor"]["reverted"]


def test_event_labels_name_the_action_trigger_and_changed_values():
    events = trace(10)["events"]
    assert report_page.event_label(events[1]) == "lr_down (plateau): dense_lr 0.01->0.005"
    assert report_page.event_label({"action": "stage", "stage": "exploit", "trigger": "", "changes": {}}) == "stage exploit"
    assert report_page.changes_text(events[3]) == "dense_lr 0.005->0.0025, batch_size 256->512"


def test_an_events_hover_text_holds_its_detail_escaped_and_wrapped():
    hover = report_page.event_hover(trace(10)["events"][3])
    lines = [html.unescape(line) for line in hover.split("<br>")]
    assert lines[0] == "<b>rollback</b> (loss_spike) at step 13, epoch 1, stage exploit"
    assert lines[1:3] == ["value 3.1 vs threshold 2.5", "dense_lr 0.005->0.0025, batch_size 256->512"]
    assert lines[3].startswith("reason: the loss rose") and all(len(line) <= 70 for line in lines[3:])
    assert "&lt;after a plateau&gt;" in report_page.event_hover(trace(10)["events"][2])
    assert report_page.event_rows(trace(10)["events"])[1] == [
        10, 1, "exploit", "lr_down", "plateau (0.01 vs threshold 0.02)", "dense_lr 0.01->0.005", "validation flat for 2 epochs"]


def drawn_texts(fig, monkeypatch) -> list:
    """``(text, window extent)`` of every non-empty text matplotlib draws for ``fig``."""
    from matplotlib.text import Text

    drawn, draw = [], Text.draw

    def record(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    monkeypatch.setattr(Text, "draw", record)
    fig.canvas.draw()
    monkeypatch.undo()
    return drawn


def layout_problems(fig, monkeypatch) -> list[str]:
    """Texts outside the figure and pairs of texts that overlap by more than a pixel each way."""
    texts, box = drawn_texts(fig, monkeypatch), fig.bbox
    problems = [f"outside: {t!r}" for t, b in texts
                if b.x0 < box.x0 - 1 or b.x1 > box.x1 + 1 or b.y0 < box.y0 - 1 or b.y1 > box.y1 + 1]
    for i, (t, a) in enumerate(texts):
        for u, b in texts[i + 1:]:
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                problems.append(f"overlap: {t!r} / {u!r}")
    return problems


def test_the_training_pngs_mark_events_without_overlapping_or_escaping_text(built, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    cycles = report.collect(tmp_path / "runs")
    events = [e["step"] for c in cycles if c["trace"] for e in c["trace"]["events"]]
    for fig, steps in ((report.training_plot(cycles), events), (curves_figure(trace(10)), [0, 10, 10, 13])):
        try:
            assert len(drawn_texts(fig, monkeypatch)) > 10  # the check sees the tick labels, titles, legend
            assert layout_problems(fig, monkeypatch) == []
            dots = [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1]
            assert sorted(int(line.get_xdata()[0]) for line in dots) == sorted(steps)  # one marker per event
        finally:
            plt.close(fig)


def test_the_served_rows_compare_the_model_with_the_better_baseline(built, tmp_path):
    cycles = report.collect(tmp_path / "runs")
    rows = report_page.served_rows(cycles)
    assert rows[0] == ["1998-01-05", "v1", None, "0.2000", "—", "—", "—"]  # an old served.json: no baselines
    assert rows[1] == ["1998-01-12", "v1", 301, "0.2100", "0.2200", "0.2200", "-0.0100"]


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


@pytest.fixture
def browser(built, tmp_path):
    """Headless Chromium on the built page, its plotly figures drawn."""
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    options, service = chromium()
    profile_dir = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(built.html.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const p = document.querySelectorAll('.js-plotly-plot');"
            "return p.length > 0 && Array.from(p).every(g => g._fullLayout && g.querySelector('.main-svg'));"))
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)


# Every non-empty svg text of each plotly figure (titles, tick labels, legend, annotations): those outside the
# figure's box, and pairs whose boxes overlap by more than a pixel each way.
LAYOUT_PROBLEMS = """
const problems = [];
let seen = 0;
for (const gd of document.querySelectorAll('.js-plotly-plot')) {
  const box = gd.getBoundingClientRect();
  const texts = Array.from(gd.querySelectorAll('svg text'))
    .filter(t => t.textContent.trim() && getComputedStyle(t).visibility !== 'hidden' && getComputedStyle(t).display !== 'none')
    .map(t => ({s: t.textContent.trim(), r: t.getBoundingClientRect()}))
    .filter(t => t.r.width > 0 && t.r.height > 0);
  seen += texts.length;
  for (const t of texts) {
    if (t.r.left < box.left - 1 || t.r.right > box.right + 1 || t.r.top < box.top - 1 || t.r.bottom > box.bottom + 1)
      problems.push(gd.id + ' outside: ' + t.s);
  }
  for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
    const a = texts[i].r, b = texts[j].r;
    if (Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1)
      problems.push(gd.id + ' overlap: ' + texts[i].s + ' / ' + texts[j].s);
  }
}
return [seen, problems];
"""

# The events trace of a figure: its index, the marker paths drawn for it, its points' x.
EVENT_POINTS = """
const gd = document.getElementById(arguments[0]);
const idx = gd.data.findIndex(t => t.name === arguments[1]);
const group = Array.from(gd.querySelectorAll('.scatterlayer .trace')).find(g => g.__data__ && g.__data__[0].trace.index === idx);
return [idx, group ? group.querySelectorAll('path.point').length : -1, Array.from(gd.data[idx].x)];
"""

HOVER = """
const gd = document.getElementById(arguments[0]);
Plotly.Fx.hover(gd, [{curveNumber: arguments[1], pointNumber: arguments[2]}], 'xy');
const layer = gd.querySelector('.hoverlayer');
return layer ? layer.textContent : '';
"""


def test_the_page_renders_every_figure_offline_in_headless_chromium(built, browser, tmp_path):
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);"
    )
    assert len(images) == 3
    for complete, width, height, alt in images:
        assert complete and width > 300 and height > 200, alt  # decoded: not a broken image
    plots = browser.execute_script("return Array.from(document.querySelectorAll('.js-plotly-plot')).map(g => "
                                   "[g.id, g.getBoundingClientRect().width, g.getBoundingClientRect().height]);")
    assert [p[0] for p in plots] == ["served-panel", *(f"training-{START[i]}-{START[i + 1]}" for i in (0, 2))]
    assert all(width > 900 and height > 300 for _, width, height in plots)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert not [url for url in fetched if url.startswith(("http:", "https:"))]  # nothing from a network
    assert browser.execute_script("return document.querySelectorAll('script[src]').length;") == 0
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    width, height = png_size(shot)
    assert width >= 1000 and height >= 1000


def test_plotly_texts_stay_in_their_figures_apart_and_every_event_answers_a_hover(built, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    seen, problems = browser.execute_script(LAYOUT_PROBLEMS)
    assert seen > 3 * 10 and problems == []  # tick labels, axis titles and legends of three figures, all readable

    cycles = [c for c in report.collect(tmp_path / "runs") if c["trace"]]
    for c in cycles:
        events = c["trace"]["events"]
        div = f"training-{c['name']}"
        idx, drawn, xs = browser.execute_script(EVENT_POINTS, div, report_page.EVENTS_TRACE)
        assert idx >= 0 and drawn == len(events) and xs == [e["step"] for e in events]  # one point per event
        for j, event in enumerate(events):  # plotly throttles hovers: ask again until this point's label shows
            expected = f"{event['action']} ({event['trigger']}) at step {event['step']}"
            WebDriverWait(browser, 5, poll_frequency=0.1).until(
                lambda d, args=(div, idx, j), want=expected: want in d.execute_script(HOVER, *args))
            hovered = browser.execute_script(HOVER, div, idx, j)
            assert ("reason: " + event["reason"])[:40] in hovered and report_page.changes_text(event) in hovered, hovered
            shared = sum(e["step"] == event["step"] for e in events) > 1  # the other event on its step is named
            assert ("also at this step" in hovered) == shared, hovered
        browser.execute_script("Plotly.Fx.unhover(document.getElementById(arguments[0]));", div)

    served = browser.execute_script("const gd = document.getElementById('served-panel');"
                                    "return [gd.data.map(t => [t.name, t.y.filter(v => v !== null).length]),"
                                    " gd.querySelectorAll('.legend .traces').length];")
    assert served == [[[name, 4 if key == "ndcg" else 3] for key, name, _ in report_page.SERVED_SERIES], 3]

    # the check can fail: the old layout (each event's label as vertical text from the top of the axes) is caught
    c = cycles[0]
    labels = [{"x": e["step"], "y": 0.97, "yref": "paper", "text": report_page.event_label(e), "textangle": -90,
               "xanchor": "right", "yanchor": "top", "showarrow": False, "font": {"size": 10, "color": "red"}}
              for e in c["trace"]["events"]]
    browser.execute_async_script("Plotly.relayout(document.getElementById(arguments[0]), {annotations: arguments[1]})"
                                 ".then(() => arguments[2]());", f"training-{c['name']}", labels)
    _, problems = browser.execute_script(LAYOUT_PROBLEMS)
    assert any("overlap: lr_down (plateau)" in p for p in problems), problems
