"""The drift check a cycle runs: a reference window against a current one.

``check_drift`` observes the signals, calibrates their thresholds by user
permutations, returns the verdict and, given an ``out_dir``, writes Evidently's files;
``champion_scorer`` adds the champion's prediction drift. How and why: docs/drift.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from recsys_retrain.drift.calibration import calibrate
from recsys_retrain.drift.evidently_files import write_files
from recsys_retrain.drift.observations import observe
from recsys_retrain.drift.signals import REQUIRED_COLUMNS, SCORE_SIGNAL, SIGNALS, configured, untested_reason
from recsys_retrain.drift.verdict import DriftReport, signal_result, verdict
from recsys_retrain.errors import DataError
from recsys_retrain.settings import DriftSettings

Scorer = Callable[[pd.DataFrame], np.ndarray]
"""Window -> one score per row (NaN where the model cannot score the row)."""


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path | None,
    settings: DriftSettings,
    scorer: Scorer | None = None,
    *,
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
) -> DriftReport:
    """Compare ``current`` with ``reference`` on designed signals.

    Args:
        reference, current: windows in the data stage's contract (``REQUIRED_COLUMNS`` at least).
        out_dir: where ``drift.json`` and ``drift.html`` go (atomically); None writes nothing.
        settings: thresholds and calibration (``Settings.drift``).
        scorer: optional champion scorer (:func:`champion_scorer`); adds the
            ``prediction_score`` signal, scoring both windows alike.
        reference_scores, current_scores: precomputed scores instead of ``scorer``, one
            per row of the window in row order.

    Returns:
        The verdict; see docs/drift.md for signals, calibration and severity.

    Example:
        >>> report = check_drift(last_4_weeks, this_week, None, Settings().drift)  # doctest: +SKIP
        >>> report.severity, report.drifted_signals  # doctest: +SKIP
        ('minor', ('new_item_share',))
    """
    for name, window in (("reference", reference), ("current", current)):
        missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
        if missing:
            raise DataError(f"{name} window lacks column(s) {', '.join(missing)}")
    empty = [name for name, w in (("reference", reference), ("current", current)) if w.empty]
    if empty:
        reason = f"{' and '.join(empty)} window empty: nothing to compare, no drift declared"
        return verdict((), reason, len(reference), len(current), settings, ("", ""))
    if scorer is not None:
        reference_scores, current_scores = _scores(scorer, reference), _scores(scorer, current)
    for name, window, scores in (("reference", reference, reference_scores), ("current", current, current_scores)):
        if scores is not None and len(scores) != len(window):
            raise DataError(f"{name}_scores has {len(scores)} values for {len(window)} rows")

    with_scores = reference_scores is not None or current_scores is not None
    signals = SIGNALS + ((SCORE_SIGNAL,) if with_scores else ())
    signals = tuple(configured(s, settings) for s in signals)
    observed = observe(reference, current, signals, settings, reference_scores, current_scores)
    notes = {s.name: observed[s.name].note or untested_reason(s, observed[s.name], reference, current, settings) for s in signals}
    tested = [s for s in signals if not notes[s.name]]
    calibrated = calibrate(tested, observed, settings)
    results = tuple(signal_result(s, observed[s.name], notes[s.name], calibrated, settings) for s in signals)
    paths = ("", "")
    report = verdict(results, "", len(reference), len(current), settings, paths)
    if out_dir is not None and tested:
        paths = write_files(report, tested, Path(out_dir), timestamp=current["timestamp"].max().to_pydatetime())
        report = verdict(results, "", len(reference), len(current), settings, paths)
    return report


def champion_scorer(model: Any, chunk_users: int = 1024) -> Scorer:
    """A scorer from a loaded champion (``recsys_retrain.model.Recommender``, as the registry returns it).

    The score of a row is the champion's score of the row's item for the row's user,
    with an empty history bag for every user, so both windows are scored with the same
    inputs and the distribution moves only when who consumes what moves. Items outside
    the champion's catalogue score NaN. Users are scored ``chunk_users`` at a time, so
    memory is bounded by ``chunk_users x catalogue`` however many users the window has.

    Example:
        >>> model, _ = candidates.try_load(settings, candidates.champion(settings).version)  # doctest: +SKIP
        >>> check_drift(reference, current, out_dir, settings.drift, scorer=champion_scorer(model))  # doctest: +SKIP
    """

    def score(window: pd.DataFrame) -> np.ndarray:
        from recsys_retrain.scoring import chunk_scorer

        users = window.drop_duplicates("user_id").reset_index(drop=True)
        for col, default in (("user_gender", "unknown"), ("user_occupation", "unknown")):
            if col not in users.columns:
                users[col] = default
        row_of_user = pd.Index(users["user_id"]).get_indexer(window["user_id"])
        col_of_item = pd.Index(model.catalogue["item_id"].astype("int64")).get_indexer(window["item_id"].astype("int64"))
        out = np.full(len(window), np.nan)
        known = np.flatnonzero(col_of_item >= 0)
        known = known[np.argsort(row_of_user[known], kind="stable")]  # rows grouped by user, to slice per chunk
        bounds = np.searchsorted(row_of_user[known], np.arange(0, len(users) + chunk_users, chunk_users))
        scorer = chunk_scorer(model, None)
        for chunk, lo in enumerate(range(0, len(users), chunk_users)):
            rows = known[bounds[chunk]:bounds[chunk + 1]]
            if len(rows):
                matrix = scorer(users.iloc[lo:lo + chunk_users]).float().numpy()
                out[rows] = matrix[row_of_user[rows] - lo, col_of_item[rows]]
        return out

    return score


def _scores(scorer: Scorer, window: pd.DataFrame) -> np.ndarray:
    scores = np.asarray(scorer(window), dtype=float)
    if scores.shape != (len(window),):
        raise DataError(f"scorer returned shape {scores.shape} for a window of {len(window)} rows")
    return scores
