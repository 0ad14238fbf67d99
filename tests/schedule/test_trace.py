"""The trace of a run: written atomically as trace.json, read back whole, and drawn as curves."""

from __future__ import annotations

import json
from types import SimpleNamespace

from recsys_retrain.schedule.plot import curves
from recsys_retrain.schedule.trace import STEP_FIELDS, Trace


def a_trace() -> Trace:
    trace = Trace(plan={"dense_lr": 0.01})
    for step in range(4):
        signals = {f: float(step) for f in STEP_FIELDS} | ({"loss": float("nan")} if step == 2 else {})
        trace.add_step(SimpleNamespace(**signals))
    trace.add_epoch(0, 0.5, 0.2, SimpleNamespace(optimizers=[]), batch_size=64)
    trace.events = [{"step": 2, "epoch": 0, "stage": "explore", "action": "lr_down", "trigger": "validation_plateau",
                     "value": 2.0, "threshold": 2.0, "changes": {"dense_lr": [0.01, 0.005]}, "reason": "plateau"}]
    return trace


def test_the_trace_is_written_atomically_and_reads_back_whole(tmp_path):
    trace = a_trace()
    path = tmp_path / "run" / "trace.json"
    path.parent.mkdir()
    path.write_text("an older trace")
    assert trace.write(path) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["trace.json"]  # no temporary file left behind
    again = Trace()
    again.load(json.loads(path.read_text()))
    assert again.to_dict() == trace.to_dict() and again.steps["loss"][2] is None  # a NaN loss is stored as null


def test_the_curves_are_drawn_to_a_png(tmp_path):
    path = curves(a_trace().to_dict(), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
