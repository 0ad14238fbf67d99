"""The cycle's gate step around the pure gate: which earlier windows it may pool, and the keep path.

No MLflow here: earlier windows are per-user metric files in cycle folders, and the
keep path only writes the summary (the registry side is in tests/registry).
"""

from __future__ import annotations

import json

import pytest

from recsys_retrain import gating
from recsys_retrain.errors import PipelineError
from recsys_retrain.gate import decide
from recsys_retrain.io import write_json
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings
from tests.test_gate import BASE, S, ev


def week(day: int) -> str:
    return f"1998-01-{day:02d}T00:00:00+00:00/1998-01-{day + 7:02d}T00:00:00+00:00"


def write_cycle(s: Settings, window: str, champion_version: int | None, gain: float, champion: bool = True) -> None:
    start, end = window.split("/")
    write_json({
        "window": window,
        "champion_version": champion_version,
        "challenger": ev(BASE + gain).to_dict(),
        "champion": ev().to_dict() if champion else None,
    }, CyclePaths.of(s, start, end).per_user)


def test_earlier_windows_of_the_same_champion_are_pooled_newest_first(tmp_path):
    s = Settings(home=tmp_path / "home")
    write_cycle(s, week(1), 3, 0.01)
    write_cycle(s, week(8), 3, 0.02)
    write_cycle(s, week(15), 3, 0.03)
    write_cycle(s, week(8).replace("01-08", "01-09").replace("01-15", "01-16"), 2, 0.04)  # another champion
    write_cycle(s, week(22), 3, 0.05)  # the window being decided: not earlier than itself
    write_cycle(s, week(12), 3, 0.06, champion=False)  # nothing was judged there
    found = gating.earlier_scores(s, week(22).split("/")[0], champion_version=3, limit=2)
    assert [w.window for w in found] == [week(15), week(8)]
    assert found[0].differences.mean() == pytest.approx(0.03)
    assert gating.earlier_scores(s, week(22).split("/")[0], champion_version=3, limit=5)[-1].window == week(1)
    assert gating.earlier_scores(s, week(22).split("/")[0], champion_version=None, limit=5) == []
    assert gating.earlier_scores(s, week(22).split("/")[0], champion_version=3, limit=0) == []


def test_files_without_a_champion_version_are_not_pooled(tmp_path):
    """Cycles written before the evaluate step named its champion cannot be matched: they are left out."""
    s = Settings(home=tmp_path / "home")
    start, end = week(1).split("/")
    write_json({"challenger": ev(BASE).to_dict(), "champion": ev().to_dict()}, CyclePaths.of(s, start, end).per_user)
    assert gating.earlier_scores(s, week(22).split("/")[0], champion_version=3, limit=3) == []


def judged(tmp_path, promote: bool) -> dict:
    p = CyclePaths(tmp_path / "run")
    d = decide(ev(BASE + (0.05 if promote else -0.05)), ev(), S, challenger_version=2, champion_version=1, window="a/b")
    write_json(d.to_dict(), p.decision)
    return {"run_dir": str(p.root), "window": "a/b", "rows_window": 10, "drift": "none", "version": 2,
            "promote": d.promote, "reason": d.reason, "decision": str(p.decision)}


def test_the_keep_path_writes_the_summary_with_the_power_of_the_evidence(tmp_path):
    summary = gating.keep(judged(tmp_path, promote=False))
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not summary["promoted"] and summary["version"] == 2 and summary["policy"] == "non_inferiority"
    assert summary["mde"] > 0 and summary["evidence_windows"] == 1 and summary["evidence_users"] == len(BASE)
    assert summary["mean_delta"] == pytest.approx(-0.05) and "gain -0.0500" in summary["reason"]
    json.dumps(summary, allow_nan=False)  # what Airflow's XCom accepts


def test_a_path_that_contradicts_the_decision_refuses_to_run(tmp_path):
    with pytest.raises(PipelineError, match="keep path must not run"):
        gating.keep(judged(tmp_path, promote=True))
    with pytest.raises(PipelineError, match="promote path must not run"):
        gating.promote(judged(tmp_path, promote=False), Settings(home=tmp_path / "home"))


def test_without_a_decision_file_neither_path_runs(tmp_path):
    j = judged(tmp_path, promote=False)
    (tmp_path / "run" / "gate_decision.json").unlink()
    with pytest.raises(PipelineError, match="no gate decision"):
        gating.keep(j)
