"""Fast checks of the drift benchmark's reading of the champion's signal (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from recsys_retrain.drift.check import check_drift
from recsys_retrain.settings import DriftSettings
from tests.drift.synthetic import NEXT, make_window, make_world

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_drift", BENCH / "drift.py")
drift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drift)


def test_score_signal_reads_the_prediction_score_verdict_alone():
    world = make_world()
    reference = make_window(world, 3000, seed=1, days=28.0)
    current = make_window(world, 800, seed=2, start=NEXT)
    rng = np.random.default_rng(0)
    ref_scores = rng.normal(0, 1, len(reference))
    same = check_drift(reference, current, None, DriftSettings(), reference_scores=ref_scores,
                       current_scores=rng.normal(0, 1, len(current)))
    moved = check_drift(reference, current, None, DriftSettings(), reference_scores=ref_scores,
                        current_scores=rng.normal(1.0, 1, len(current)))
    assert not drift.score_signal(same) and drift.score_signal(moved)
    # NaN reference scores (rows a champion trained on, left out) are skipped, not a drift of their own
    partial = np.where(np.arange(len(reference)) % 4 == 0, ref_scores, np.nan)
    held = check_drift(reference, current, None, DriftSettings(), reference_scores=partial,
                       current_scores=rng.normal(0, 1, len(current)))
    assert not drift.score_signal(held)
