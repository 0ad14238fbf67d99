"""Drift between a reference window and a current window of interactions.

Evidently's stock drift preset would treat ``user_id`` and ``item_id`` as numbers, so
its verdict would describe id ranges, not behaviour. Instead we derive signals that
a recommender team can act on (who rates, what they rate, how they rate, when) and
test each one with a threshold calibrated for this pair of windows.

=======================  ===========  =============  ==================================================
signal                   observed on  value          meaning
=======================  ===========  =============  ==================================================
rating                   interaction  wasserstein    rating inflation / deflation
item_popularity_decile   interaction  jensenshannon  consumption by the reference's item-popularity decile
top_items_share          interaction  share_gap      share of the reference's top ``top_items`` items
new_item_share           interaction  share          current share on items the reference never saw
rising_item_share        interaction  share          current share on items surging past their reference rate
new_user_share           interaction  share          share by users unseen in the days before, beyond the usual churn
hour_of_day              interaction  jensenshannon  daily rhythm (UTC)
day_of_week              interaction  jensenshannon  weekly rhythm (UTC)
item_release_year        interaction  wasserstein    age of what is consumed (0 = unknown, left out)
user_activity            session      wasserstein    log2 interactions per session (a user's day)
session_pace             interaction  wasserstein    log2(1 + seconds) since the user's previous row that day
user_age                 user         wasserstein    who is active (0 = unknown, left out)
genre                    genre        jensenshannon  genre mix ("|"-split; "" -> "(none)")
prediction_score         interaction  wasserstein    champion's score of the consumed item (``scorer``)
=======================  ===========  =============  ==================================================

Why thresholds are calibrated, not fixed. A week of MovieLens-100K holds 40-130 users
and one user can make 13 % of its ratings, so rows are far from independent: a fixed
threshold on a per-row statistic flags every real week. Here the *user* is the unit:

* a user's rows weigh ``n_rows ** -user_weight_power`` (0.5 by default), so heavy users
  count more than light ones but do not drown them;
* every signal is a function of which users sit in which window, and its no-drift
  distribution comes from ``permutations`` random re-assignments of the pooled users
  to the two windows (window sizes kept; users past ``max_units`` per side are pooled
  into random groups first, which keeps the test exact and the cost bounded);
* the signals that need the reference's own statistics (popularity deciles, top items,
  new and rising items) recompute them in every permutation from the users on the
  reference side, so the reference statistics and the test agree (the reference's
  item counts are computed once per permutation and reused by all four signals);
* new users are judged against the usual churn: the current window's share of rows
  by users absent from the ``H`` days before it, against the same share of the
  reference's last days (as long as the current window) with the ``H`` days before
  them; these two targets are permuted with each other (a user active in both windows
  could not be moved between reference and current). A reference shorter than twice
  the current window leaves it untested. New items are not judged this way: the
  items a history happens to hold vary more than user permutations see, which made
  that test raise false alarms (13 % at p < 0.05 on no-drift weeks);
* the thresholds are set jointly (Westfall-Young min-p) so that the chance of *any*
  tested signal drifting on exchangeable windows is ``alpha``. A signal's threshold is
  the matching quantile of its permutation distribution, floored by
  ``stattest_threshold`` / ``floors``; it drifts when ``value > threshold``;
* a signal with fewer than ``min_users`` users on a side is not tested (note says why).

Methods: ``wasserstein`` distances are divided by the pooled spread of both windows
(which the permutations do not change), so a constant or one-row reference cannot blow
them up and a single support point gives 0; ``jensenshannon`` and ``psi`` compare
weighted histograms; ``share`` is a weighted share of the current window's rows (items
the reference never saw; rising items: items with at least ``rising_min_users`` rows
and ``rising_factor`` times the rows the reference's rate predicts; new users, less the
reference's own share), tested one-sided (an influx); ``share_gap`` is
how far the current share on the reference's top items departs from the reference's
own share, less the gap expected without drift (the permutation mean), in either
direction. Calendar signals are only tested when both windows cover at least 90 % of
the cycle (a day for ``hour_of_day``, a week for ``day_of_week``).

Severity: "major" when the drifted share of tested signals reaches ``major_share`` or one
signal reaches ``major_ratio`` times its threshold; "minor" when at least
``min_drifted_signals`` signals (default 1) drifted or the share reaches ``minor_share``;
else "none". An empty window gives severity "none", no signals, no files and a
``reason``. Missing columns raise :class:`~recsys_retrain.errors.DataError`.

Prediction drift: ``scorer`` (see :func:`champion_scorer`) maps a window to one score
per row, the champion's score of the item each row consumed, and adds the
``prediction_score`` signal; rows it cannot score (items the champion never saw) are
NaN and left out.

The verdict is computed from the histograms above (fast: no Evidently call). When an
``out_dir`` is given, ``drift.json`` holds the verdict (plus Evidently's snapshot) and
``drift.html`` is Evidently's report of the same signals, one ``ValueDrift`` per tested
signal (histogram signals drawn at their calibrated threshold; the share signals as
per-row new/seen or top/other labels under Evidently's z-test; ``rising_item_share`` has
no per-row reference label and is in the JSON only). Evidently scores plain per-row columns with its own
normalisation, so its numbers can differ from the verdict's; the verdict is ours.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_retrain.errors import DataError
from recsys_retrain.settings import DriftSettings

REQUIRED_COLUMNS = (
    "user_id", "item_id", "timestamp", "rating", "user_age", "item_genres", "item_release_year",
)
CALENDAR_COVERAGE = 0.9
"""A window must span this share of a calendar cycle for the cycle's signal to be tested."""
MAX_BINS = 64
"""Numeric signals with more distinct values are cut into this many pooled-quantile bins."""
PSI_EPS = 1e-4
"""Empty PSI buckets count as this share (Evidently's default)."""
METHODS = ("jensenshannon", "psi", "wasserstein")
"""Methods a histogram signal may be given in ``DriftSettings.methods``."""
DENSE_CELLS = 20_000_000
"""Unit x item count matrices up to this size are multiplied dense (160 MB of float64 at most)."""
PERMUTATION_CELLS = 20_000_000
"""Largest (permutations x keys) block of reference counts held at once (bounds memory)."""
DAY_NS = 86_400 * 10**9
DECILE_LABELS = np.array(["new"] + [f"d{d:02d}" for d in range(1, 11)], dtype=object)
Scorer = Callable[[pd.DataFrame], np.ndarray]
"""Window -> one score per row (NaN where the model cannot score the row)."""


@dataclass(frozen=True)
class Signal:
    """How one signal is observed and tested.

    ``unit`` is "interaction", "user" or "genre" for histogram signals, "item" for the
    signals recomputed from the reference in every permutation, "target" for the one
    tested on its own pair of equally long target windows (new users).
    """

    name: str
    unit: str
    method: str
    categorical: bool
    cycle: pd.Timedelta | None = None  # calendar signals: span a window must cover

    @property
    def relative(self) -> bool:
        return self.unit == "item"


SIGNALS: tuple[Signal, ...] = (
    Signal("rating", "interaction", "wasserstein", False),
    Signal("item_popularity_decile", "item", "jensenshannon", True),
    Signal("top_items_share", "item", "share_gap", True),
    Signal("new_item_share", "item", "share", True),
    Signal("rising_item_share", "item", "share", True),
    Signal("new_user_share", "target", "share", True),
    Signal("hour_of_day", "interaction", "jensenshannon", True, pd.Timedelta(days=1)),
    Signal("day_of_week", "interaction", "jensenshannon", True, pd.Timedelta(days=7)),
    Signal("item_release_year", "interaction", "wasserstein", False),
    Signal("user_activity", "user", "wasserstein", False),
    Signal("session_pace", "interaction", "wasserstein", False),
    Signal("user_age", "user", "wasserstein", False),
    Signal("genre", "genre", "jensenshannon", True),
)
NEWCOMER_SIGNALS = {"new_user_share": "user_id"}
"""Signals tested on equally long target windows (see ``_newcomers``), and the column each follows."""
SCORE_SIGNAL = Signal("prediction_score", "interaction", "wasserstein", False)


@dataclass(frozen=True)
class SignalResult:
    """One signal's test, with the numbers behind its verdict.

    ``drifted`` is ``value > threshold``; ``p_value`` is the share of user permutations
    scoring at least ``value``. An untested signal (``tested=False``) has value 0.0,
    p-value 1.0, is never drifted, and ``note`` says why.
    """

    name: str
    method: str
    value: float
    threshold: float
    drifted: bool
    tested: bool
    n_reference: int  # users observed on each side
    n_current: int
    note: str = ""
    p_value: float = 1.0


@dataclass(frozen=True)
class DriftReport:
    """Verdict of one drift check; plain values only, so it travels through XCom."""

    signals: tuple[SignalResult, ...]
    drifted_share: float
    severity: str  # "none" | "minor" | "major"
    reason: str
    minor_share: float
    major_share: float
    reference_rows: int
    current_rows: int
    json_path: str  # "" when no files were written
    html_path: str
    alpha: float = 0.0
    permutations: int = 0

    @property
    def drifted_signals(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signals if s.drifted)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["signals"] = [asdict(s) for s in self.signals]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        fields_ = dict(data)
        fields_["signals"] = tuple(SignalResult(**s) for s in data["signals"])
        return cls(**fields_)


@dataclass
class _Observed:
    """One signal's observations: a (units x bins) weighted count matrix.

    Relative signals keep a sparse (units x keys) matrix of weighted rows per item (or
    user id) instead; their bins are derived from the reference side per permutation.
    """

    counts: Any  # np.ndarray (units x bins) or, for relative signals, sp.csr_matrix (units x keys)
    support: np.ndarray  # bin values (numeric) or labels (categorical)
    users: tuple[int, int]  # users with an observation on each side
    note: str = ""
    pooled_sd: float = 0.0
    n_ref_units: int = 0  # rows [0, n_ref_units) of counts are the reference's units
    raw: Any = None  # relative signals: unweighted row counts, same shape as counts
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # per-row values for Evidently


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
        The verdict; see the module docstring for signals, calibration and severity.

    Example:
        >>> report = check_drift(last_4_weeks, this_week, None, Settings().drift)
        >>> report.severity, report.drifted_signals
        ('minor', ('new_item_share',))
    """
    for name, window in (("reference", reference), ("current", current)):
        missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
        if missing:
            raise DataError(f"{name} window lacks column(s) {', '.join(missing)}")
    empty = [name for name, w in (("reference", reference), ("current", current)) if w.empty]
    if empty:
        reason = f"{' and '.join(empty)} window empty: nothing to compare, no drift declared"
        return _verdict((), reason, len(reference), len(current), settings, ("", ""))
    if scorer is not None:
        reference_scores, current_scores = _scores(scorer, reference), _scores(scorer, current)
    for name, window, scores in (("reference", reference, reference_scores), ("current", current, current_scores)):
        if scores is not None and len(scores) != len(window):
            raise DataError(f"{name}_scores has {len(scores)} values for {len(window)} rows")

    with_scores = reference_scores is not None or current_scores is not None
    signals = SIGNALS + ((SCORE_SIGNAL,) if with_scores else ())
    signals = tuple(_configured(s, settings) for s in signals)
    observed = _observe(reference, current, signals, settings, reference_scores, current_scores, out_dir is not None)
    notes = {s.name: observed[s.name].note or _untested_reason(s, observed[s.name], reference, current, settings) for s in signals}
    tested = [s for s in signals if not notes[s.name]]
    calibrated = _calibrate(tested, observed, settings)
    results = tuple(_result(s, observed[s.name], notes[s.name], calibrated, settings) for s in signals)
    paths = ("", "")
    report = _verdict(results, "", len(reference), len(current), settings, paths)
    if out_dir is not None and tested:
        paths = _write_files(report, tested, observed, Path(out_dir))
        report = _verdict(results, "", len(reference), len(current), settings, paths)
    return report


def champion_scorer(model: Any) -> Scorer:
    """A scorer from a loaded champion (``recsys_retrain.model.Recommender``, as the registry returns it).

    The score of a row is the champion's score of the row's item for the row's user,
    with an empty history bag for every user, so both windows are scored with the same
    inputs and the distribution moves only when who consumes what moves. Items outside
    the champion's catalogue score NaN.

    Example:
        >>> model, _ = candidates.try_load(settings, candidates.champion(settings).version)
        >>> check_drift(reference, current, out_dir, settings.drift, scorer=champion_scorer(model))
    """

    def score(window: pd.DataFrame) -> np.ndarray:
        users = window.drop_duplicates("user_id").reset_index(drop=True)
        for col, default in (("user_gender", "unknown"), ("user_occupation", "unknown")):
            if col not in users.columns:
                users[col] = default
        matrix = model.score(users, None).float().numpy()
        row_of_user = pd.Index(users["user_id"]).get_indexer(window["user_id"])
        col_of_item = pd.Index(model.catalogue["item_id"].astype("int64")).get_indexer(window["item_id"].astype("int64"))
        out = np.full(len(window), np.nan)
        known = col_of_item >= 0
        out[known] = matrix[row_of_user[known], col_of_item[known]]
        return out

    return score


def _scores(scorer: Scorer, window: pd.DataFrame) -> np.ndarray:
    scores = np.asarray(scorer(window), dtype=float)
    if scores.shape != (len(window),):
        raise DataError(f"scorer returned shape {scores.shape} for a window of {len(window)} rows")
    return scores


def _configured(signal: Signal, settings: DriftSettings) -> Signal:
    method = settings.methods.get(signal.name, signal.method)
    fixed = signal.relative or signal.method not in METHODS
    if fixed and method != signal.method:
        raise ValueError(f"drift method for {signal.name} is fixed ({signal.method}): its bins come from the reference")
    if not fixed and method not in METHODS:
        raise ValueError(f"drift method for {signal.name} must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "wasserstein" and signal.categorical:
        raise ValueError(f"{signal.name} is categorical: wasserstein needs an ordered signal")
    return Signal(signal.name, signal.unit, method, signal.categorical, signal.cycle)


# --------------------------------------------------------------------------- observations


def _observe(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    signals: tuple[Signal, ...],
    settings: DriftSettings,
    reference_scores: np.ndarray | None,
    current_scores: np.ndarray | None,
    with_labels: bool = True,
) -> dict[str, _Observed]:
    """Every signal as a (units x bins) matrix; units are users (or random groups of users).

    ``with_labels`` also keeps the per-row values Evidently draws (only needed for files).
    """
    rng = np.random.default_rng(settings.seed)
    r_unit, r_users, r_weight = _units(reference["user_id"].to_numpy(), settings, rng)
    c_unit, c_users, c_weight = _units(current["user_id"].to_numpy(), settings, rng)
    n_ref_units = int(r_unit.max()) + 1
    units = np.concatenate([r_unit, c_unit + n_ref_units])
    n_units = n_ref_units + int(c_unit.max()) + 1
    weight = np.concatenate([r_weight, c_weight])
    user_key = np.concatenate([r_users, c_users + r_users.max() + 1])  # distinct users per side
    side = np.concatenate([np.zeros(len(reference), bool), np.ones(len(current), bool)])

    both = pd.concat([reference[list(REQUIRED_COLUMNS)], current[list(REQUIRED_COLUMNS)]], ignore_index=True)
    ts = both["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    items = both["item_id"].to_numpy()

    def rows(name: str, codes: np.ndarray, support: np.ndarray) -> None:
        keep = codes >= 0
        out[name] = _matrix(units[keep], codes[keep], weight[keep], n_units, len(support), support, side[keep], user_key[keep])

    out: dict[str, _Observed] = {}
    wanted = {s.name: s for s in signals}
    rows("rating", *_numeric(both["rating"].to_numpy(float)))
    item_codes, item_index = pd.factorize(items)
    by_item = _keyed(units, item_codes, weight, n_units, len(item_index), side, user_key)
    by_item.labels = _item_labels(both["item_id"], both["user_id"], side, settings.top_items) if with_labels else {}
    for name in ("item_popularity_decile", "top_items_share", "rising_item_share", "new_item_share"):
        out[name] = by_item
    rows("hour_of_day", (ts // 3_600_000_000_000) % 24, np.array([f"{h:02d}" for h in range(24)], object))
    rows("day_of_week", (ts // DAY_NS + 3) % 7, np.array(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], object))
    year = both["item_release_year"].to_numpy(float)
    rows("item_release_year", *_numeric(np.where(year > 0, year, np.nan)))
    if "prediction_score" in wanted:
        n_ref, n_cur = len(reference), len(current)
        scores = [s if s is not None else np.full(n, np.nan) for s, n in ((reference_scores, n_ref), (current_scores, n_cur))]
        rows("prediction_score", *_numeric(np.concatenate(scores).astype(float)))
        if reference_scores is None or current_scores is None:
            out["prediction_score"].note = "scores given for one window only"

    # user-level signals: one observation per (side, user), weight 1
    first = np.unique(user_key, return_index=True)[1]
    u_units, u_side, u_key = units[first], side[first], user_key[first]
    ones = np.ones(len(first))
    out["user_activity"] = _activity(user_key, ts // DAY_NS, units, side, n_units)
    rows("session_pace", *_numeric(_pace(user_key, ts)))
    age = both["user_age"].to_numpy(float)[first]
    age_codes, age_support = _numeric(np.where(age > 0, age, np.nan))
    keep = age_codes >= 0
    out["user_age"] = _matrix(u_units[keep], age_codes[keep], ones[keep], n_units, len(age_support), age_support, u_side[keep], u_key[keep])
    out["genre"] = _genres(both["item_genres"], item_codes, len(item_index), units, weight, n_units, side, user_key, with_labels)
    for obs in out.values():
        obs.n_ref_units = n_ref_units
    out.update(_newcomers(reference, current, settings, rng))
    return {name: out[name] for name in wanted}


def _activity(user_key: np.ndarray, day: np.ndarray, units: np.ndarray, side: np.ndarray, n_units: int) -> _Observed:
    """log2 rows per session (a user's rows on one UTC day), one observation per session.

    Sessions, not users, so the distribution does not depend on the window's length:
    a longer window holds more of a heavy user's sessions, not bigger ones.
    """
    sessions = pd.DataFrame({"key": user_key, "day": day, "unit": units, "side": side})
    per = sessions.groupby(["key", "day"], sort=False).agg(size=("unit", "size"), unit=("unit", "first"), side=("side", "first"))
    codes, support = _numeric(np.log2(per["size"].to_numpy(float)))
    keys = per.index.get_level_values("key").to_numpy()
    return _matrix(per["unit"].to_numpy(), codes, per["size"].to_numpy(float), n_units, len(support), support, per["side"].to_numpy(), keys)


def _pace(user_key: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per row: log2(1 + seconds) since the same user's previous row on the same UTC day; NaN for a day's first row.

    Lost or thinned events (a broken tracker, a sampled log) leave sessions as long but
    sparser: the gaps between a user's interactions widen, which ``user_activity`` sees
    only through the coarser rows-per-session count (its small sessions just vanish).
    """
    order = np.lexsort((ts, user_key))
    key, t = user_key[order], ts[order]
    same = np.zeros(len(t), bool)
    same[1:] = (key[1:] == key[:-1]) & (t[1:] // DAY_NS == t[:-1] // DAY_NS)
    gap = np.full(len(t), np.nan)
    gap[1:] = np.where(same[1:], (t[1:] - t[:-1]) / 1e9, np.nan)
    out = np.empty(len(t))
    out[order] = np.log2(1.0 + gap)
    return out


def _keyed(
    units: np.ndarray, keys: np.ndarray, weight: np.ndarray, n_units: int, n_keys: int, side: np.ndarray, user_key: np.ndarray
) -> _Observed:
    """Sparse (units x keys) weighted row counts for the signals recomputed per permutation."""
    shape = (n_units, max(n_keys, 1))
    matrix = sp.csr_matrix((weight, (units, keys)), shape=shape)
    raw = sp.csr_matrix((np.ones(len(keys)), (units, keys)), shape=shape)
    return _Observed(matrix, np.array(["new", "seen"], object), _user_counts(side, user_key), raw=raw)


def _newcomers(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings, rng: np.random.Generator) -> dict[str, _Observed]:
    """New-user rows of two equally long target windows, each against as much history before it.

    The current window's rows are new when their user is absent from the last ``H``
    days of the reference; the reference's own last days (as long as the current
    window) are the other target, with the ``H`` days before them as history. So the
    steady arrival of users is the baseline, and only an influx beyond it drifts. A
    user active in both windows could not be moved between reference and current,
    but the two targets do not overlap in time.
    """
    support = np.array(["new", "seen"], object)
    ref_ts, cur_ts = reference["timestamp"], current["timestamp"]
    span = cur_ts.max() - cur_ts.min()
    target_start = ref_ts.max() - span
    history = target_start - ref_ts.min()
    if history < span or span <= pd.Timedelta(0):
        note = f"reference spans {ref_ts.max() - ref_ts.min()}, under twice the current window's {span}"
        return {name: _Observed(np.zeros((2, 2)), support, (0, 0), note=note, n_ref_units=1) for name in NEWCOMER_SIGNALS}
    ref_target = reference[ref_ts >= target_start]
    ref_history = reference[(ref_ts < target_start) & (ref_ts >= target_start - history)]
    cur_history = reference[ref_ts >= cur_ts.min() - history]
    r_unit, r_users, r_weight = _units(ref_target["user_id"].to_numpy(), settings, rng)
    c_unit, c_users, c_weight = _units(current["user_id"].to_numpy(), settings, rng)
    n_ref = int(r_unit.max()) + 1
    units = np.concatenate([r_unit, c_unit + n_ref])
    side = np.concatenate([np.zeros(len(ref_target), bool), np.ones(len(current), bool)])
    weight = np.concatenate([r_weight, c_weight])
    user_key = np.concatenate([r_users, c_users + r_users.max() + 1])
    out = {}
    for name, column in NEWCOMER_SIGNALS.items():
        seen_ref = ref_target[column].isin(ref_history[column].unique()).to_numpy()
        seen_cur = current[column].isin(cur_history[column].unique()).to_numpy()
        codes = np.concatenate([seen_ref, seen_cur]).astype(int)  # 0 = new, 1 = seen
        out[name] = _matrix(units, codes, weight, int(units.max()) + 1, 2, support, side, user_key)
        out[name].n_ref_units = n_ref
    return out


def _item_labels(item_ids: pd.Series, user_ids: pd.Series, side: np.ndarray, top_items: int) -> dict[str, np.ndarray]:
    """Per-row labels Evidently draws: decile, top/other and new/seen (reference: leave-one-user-out)."""
    ref_items, ref_users = item_ids[~side], user_ids[~side]
    counts = ref_items.value_counts()
    users_per_item = pd.DataFrame({"i": ref_items, "u": ref_users}).groupby("i")["u"].nunique()
    deciles = _popularity_deciles(counts)
    top = set(counts.index[:top_items])
    labels = {}
    for name, mask in (("ref", ~side), ("cur", side)):
        ids = item_ids[mask]
        at = pd.Index(deciles.index).get_indexer(ids)
        decile = np.where(at >= 0, deciles.to_numpy()[np.maximum(at, 0)] if len(deciles) else 0, 0)
        labels[f"decile_{name}"] = DECILE_LABELS[decile]
        labels[f"top_{name}"] = np.where(ids.isin(top), "top", "other").astype(object)
    labels["new_cur"] = np.where(item_ids[side].isin(counts.index), "seen", "new").astype(object)
    labels["new_ref"] = np.where(ref_items.map(users_per_item).to_numpy() > 1, "seen", "new").astype(object)
    return labels


def _genres(
    genres: pd.Series, item_codes: np.ndarray, n_items: int, units: np.ndarray, weight: np.ndarray, n_units: int,
    side: np.ndarray, user_key: np.ndarray, with_labels: bool = True,
) -> _Observed:
    """(unit x item) weights times an (item x genre) indicator."""
    genre_of = pd.Series(genres.to_numpy(), index=item_codes).groupby(level=0).first().reindex(range(n_items))
    split = genre_of.fillna("").astype(str).str.split("|").explode()
    split = split.replace("", "(none)")
    g_codes, g_labels = pd.factorize(split.to_numpy())
    indicator = sp.csr_matrix((np.ones(len(g_codes)), (split.index.to_numpy(), g_codes)), shape=(n_items, len(g_labels)))
    unit_item = sp.csr_matrix((weight, (units, item_codes)), shape=(n_units, n_items))
    counts = np.asarray((unit_item @ indicator).todense())
    genre_rows = np.asarray(indicator.sum(axis=1)).ravel()[item_codes] > 0
    return _Observed(
        counts, np.asarray(g_labels, object), _user_counts(side[genre_rows], user_key[genre_rows]),
        labels={"ref": _genre_labels(genres, ~side), "cur": _genre_labels(genres, side)} if with_labels else {},
    )


def _units(user_ids: np.ndarray, settings: DriftSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: unit index (user, or random group of users), user index, row weight."""
    user, uniques = pd.factorize(user_ids)
    if len(user) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    n_rows = np.bincount(user)
    weight = n_rows[user].astype(float) ** -settings.user_weight_power
    unit = user
    if len(uniques) > settings.max_units:
        unit = (rng.permutation(len(uniques)) % settings.max_units)[user]
    return unit, user, weight


def _numeric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin codes (-1 for NaN) and bin values: distinct values, or pooled-quantile bins past MAX_BINS."""
    finite = np.isfinite(values)
    codes = np.full(len(values), -1)
    if not finite.any():
        return codes, np.zeros(0)
    v = values[finite]
    support = np.unique(v)
    if len(support) <= MAX_BINS:
        codes[finite] = np.searchsorted(support, v)
        return codes, support
    edges = np.unique(np.quantile(v, np.linspace(0, 1, MAX_BINS + 1)))
    code = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(code, weights=v, minlength=len(edges) - 1)
    n = np.bincount(code, minlength=len(edges) - 1)
    keep = n > 0
    remap = np.cumsum(keep) - 1
    codes[finite] = remap[code]
    return codes, (sums[keep] / n[keep])


def _matrix(
    units: np.ndarray, codes: np.ndarray, weight: np.ndarray, n_units: int, k: int, support: np.ndarray,
    side: np.ndarray, user_key: np.ndarray,
) -> _Observed:
    k = max(k, 1)
    counts = np.bincount(units * k + codes, weights=weight, minlength=n_units * k).reshape(n_units, k)
    obs = _Observed(counts, support if len(support) else np.zeros(1), _user_counts(side, user_key))
    if isinstance(support, np.ndarray) and support.dtype != object and len(support) > 1:
        pooled = counts.sum(axis=0)
        p = pooled / pooled.sum()
        mean = float(p @ support)
        obs.pooled_sd = float(np.sqrt(max(p @ (support - mean) ** 2, 0.0)))
    obs.labels = {"ref": _decode(codes[~side], obs.support), "cur": _decode(codes[side], obs.support)}
    return obs


def _decode(codes: np.ndarray, support: np.ndarray) -> np.ndarray:
    return support[codes] if len(codes) else np.zeros(0, dtype=support.dtype)


def _user_counts(side: np.ndarray, user_key: np.ndarray) -> tuple[int, int]:
    return len(np.unique(user_key[~side])), len(np.unique(user_key[side]))


def _genre_labels(genres: pd.Series, mask: np.ndarray) -> np.ndarray:
    """Each row's genres, one entry per genre (split once per distinct genre string)."""
    codes, uniques = pd.factorize(genres[mask].fillna("").astype(str))
    parts = [[g or "(none)" for g in u.split("|")] for u in uniques]
    lengths = np.array([len(p) for p in parts], dtype=int)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    flat = np.array([g for p in parts for g in p], dtype=object)
    n = lengths[codes]
    ends = np.cumsum(n)
    within = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - n, n)
    return flat[np.repeat(starts[codes], n) + within] if len(flat) else np.zeros(0, dtype=object)


def _popularity_deciles(counts: pd.Series) -> pd.Series:
    """Decile (1 = most popular tenth of items) per item, from counts sorted descending; ties by order."""
    if counts.empty:
        return pd.Series(dtype="int64")
    rank = np.arange(1, len(counts) + 1)
    return pd.Series(np.ceil(rank / len(counts) * 10).clip(1, 10).astype("int64"), index=counts.index)


def _untested_reason(signal: Signal, obs: _Observed, reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> str:
    """Why a signal cannot be tested meaningfully, or "" when it can."""
    for side_name, n in zip(("reference", "current"), obs.users):
        if n == 0:
            return f"no {signal.name} values in the {side_name} window"
    for side_name, n in zip(("reference", "current"), obs.users):
        if n < settings.min_users:
            return f"{side_name} window has {n} user(s) with {signal.name} values, under min_users {settings.min_users}"
    if signal.cycle is not None:
        need = signal.cycle * CALENDAR_COVERAGE
        for side_name, window in (("reference", reference), ("current", current)):
            span = window["timestamp"].max() - window["timestamp"].min()
            if span < need:
                return f"{side_name} window spans {span}, under {CALENDAR_COVERAGE:.0%} of a {signal.cycle} cycle"
    return ""


# --------------------------------------------------------------------------- calibration


def _calibrate(tested: list[Signal], observed: dict[str, _Observed], settings: DriftSettings) -> dict[str, tuple[float, float, float]]:
    """``{name: (value, threshold, p_value)}`` from one shared set of user permutations."""
    if not tested:
        return {}
    value, perm = _permutation_scores(tested, observed, settings)
    b_total = perm.shape[0]
    perm = np.round(perm, 12)
    value = np.round(value, 12)
    ascending = np.sort(perm, axis=0)
    # permutation p-value of each permutation, per signal, then the min over signals
    at_least = b_total - np.stack([np.searchsorted(ascending[:, j], perm[:, j], side="left") for j in range(len(tested))], axis=1)
    min_p = (at_least / b_total).min(axis=1)
    k = int(math.floor(settings.alpha * b_total))
    critical = float(np.sort(min_p)[k - 1]) if k >= 1 else 0.0
    allowed = int(math.floor(critical * (b_total + 1) - 1 + 1e-9))  # permutations allowed at or above the value
    out = {}
    for j, s in enumerate(tested):
        descending = ascending[::-1, j]
        threshold = float(descending[allowed]) if allowed >= 0 else float(descending[0])
        floor = settings.floors.get(s.name, settings.stattest_threshold)
        threshold = max(threshold, float(floor))
        p_value = (1 + int((perm[:, j] >= value[j]).sum())) / (b_total + 1)
        if allowed < 0:
            threshold = max(threshold, float(value[j]))  # too few permutations to ever reject
        out[s.name] = (float(value[j]), threshold, float(p_value))
    return out


def _permutation_scores(tested: list[Signal], observed: dict[str, _Observed], settings: DriftSettings) -> tuple[np.ndarray, np.ndarray]:
    """Every tested signal's score on the observed split and on ``permutations`` random splits.

    Signals on the main reference/current units share one set of permutations (their
    dependence is kept for the joint thresholds); a "target" signal has its own units
    and permutations.
    """
    rng = np.random.default_rng(settings.seed)
    value, perm = np.zeros(len(tested)), np.zeros((settings.permutations, len(tested)))
    for group in ([s for s in tested if s.unit != "target"], [s for s in tested if s.unit == "target"]):
        if group:
            cols = [tested.index(s) for s in group]
            value[cols], perm[:, cols] = _group_scores(group, observed, settings, rng)
    return value, perm


def _group_scores(
    tested: list[Signal], observed: dict[str, _Observed], settings: DriftSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of signals on the same units: the observed split (first) and ``permutations`` random splits."""
    histogram = [s for s in tested if not s.relative]
    relative = [s for s in tested if s.relative]
    first = observed[tested[0].name]
    n_ref, n_units = first.n_ref_units, first.counts.shape[0]
    blocks = [observed[s.name].counts for s in histogram]
    widths = np.cumsum([0] + [b.shape[1] for b in blocks])
    data = np.hstack(blocks) if blocks else np.zeros((n_units, 0))
    total = data.sum(axis=0)
    keyed = {id(observed[s.name]): observed[s.name] for s in relative}  # item signals share one matrix
    transposed = {k: (_keys_by_units(o.counts), _keys_by_units(o.raw)) for k, o in keyed.items()}
    widest = max([m.shape[0] for m, _ in transposed.values()], default=1)
    chunk = int(max(1, min(250, PERMUTATION_CELLS // max(widest, 1))))

    observed_pick = np.zeros((1, n_units))
    observed_pick[0, :n_ref] = 1.0
    b_total = settings.permutations
    scores = np.empty((b_total + 1, len(tested)))
    column = {s.name: j for j, s in enumerate(tested)}
    for start in range(0, b_total + 1, chunk):
        b = min(chunk, b_total + 1 - start)
        pick = _random_picks(rng, b - (start == 0), n_units, n_ref)
        if start == 0:
            pick = np.vstack([observed_pick, pick])
        ref_h = pick @ data
        for s, a, c in zip(histogram, widths, widths[1:]):
            scores[start : start + b, column[s.name]] = _distance(s, observed[s.name], ref_h[:, a:c], total[a:c] - ref_h[:, a:c])
        for key, (weighted_t, raw_t) in transposed.items():
            counts = _ItemCounts(weighted_t, raw_t, pick)
            for s in relative:
                if id(observed[s.name]) == key:
                    scores[start : start + b, column[s.name]] = _relative_score(s, counts, settings)
    for s in relative:
        if s.method == "share_gap":  # two-sided: distance from the no-drift gap
            j = column[s.name]
            scores[:, j] = np.abs(scores[:, j] - scores[1:, j].mean())
    return scores[0], scores[1:]


def _random_picks(rng: np.random.Generator, b: int, n_units: int, n_ref: int) -> np.ndarray:
    """``b`` random 0/1 rows with ``n_ref`` ones: which units sit on the reference side."""
    pick = np.zeros((b, n_units))
    if b == 0:
        return pick
    keys = rng.random((b, n_units))
    idx = np.argpartition(keys, n_ref - 1, axis=1)[:, :n_ref] if n_ref < n_units else np.tile(np.arange(n_units), (b, 1))
    np.put_along_axis(pick, idx, 1.0, axis=1)
    return pick


def _keys_by_units(matrix: sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """The (keys x units) transpose, dense while small: a dense product uses every core, a sparse one only one."""
    if matrix.shape[0] * matrix.shape[1] <= DENSE_CELLS:
        return np.ascontiguousarray(matrix.T.toarray(), dtype=np.float32)
    return matrix.T.tocsr().astype(np.float32)


class _ItemCounts:
    """Reference and current item counts of a batch of splits, (B x items), computed once per batch."""

    def __init__(self, weighted_t: np.ndarray | sp.csr_matrix, raw_t: np.ndarray | sp.csr_matrix, pick: np.ndarray) -> None:
        pick = pick.astype(np.float32)  # exact for counts; halves the memory traffic of the product
        self.ref = np.asarray(weighted_t @ pick.T, dtype=np.float64).T
        self.cur = np.asarray(weighted_t.sum(axis=1, dtype=np.float64)).ravel() - self.ref
        self._raw_t, self._pick = raw_t, pick

    @functools.cached_property
    def by_popularity(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts with items sorted by reference count, most popular first."""
        order = np.argsort(-self.ref, axis=1)
        return np.take_along_axis(self.ref, order, axis=1), np.take_along_axis(self.cur, order, axis=1)

    @property
    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        ref = np.asarray(self._raw_t @ self._pick.T, dtype=np.float64).T
        return ref, np.asarray(self._raw_t.sum(axis=1, dtype=np.float64)).ravel() - ref


def _relative_score(signal: Signal, counts: _ItemCounts, settings: DriftSettings) -> np.ndarray:
    """Per split of the batch: a signal whose bins are defined by the reference side's items."""
    ref, cur = counts.ref, counts.cur
    cur_total = cur.sum(axis=1)
    ok = (cur_total > 0) & (ref.sum(axis=1) > 0)
    safe_total = np.where(ok, cur_total, 1.0)
    if signal.name == "new_item_share":
        return np.where(ok, (cur * (ref <= 0)).sum(axis=1) / safe_total, 0.0)
    if signal.name == "rising_item_share":
        ref_n, cur_n = counts.raw
        expected = ref_n * (cur_n.sum(axis=1, keepdims=True) / np.maximum(ref_n.sum(axis=1, keepdims=True), 1.0))
        rising = (cur_n >= settings.rising_min_users) & (cur_n >= settings.rising_factor * expected)
        return np.where(ok, (cur * rising).sum(axis=1) / safe_total, 0.0)
    ref_sorted, cur_sorted = counts.by_popularity
    if signal.name == "top_items_share":
        n = min(settings.top_items, ref.shape[1])
        ref_share = ref_sorted[:, :n].sum(axis=1) / np.maximum(ref.sum(axis=1), 1e-300)
        cur_share = cur_sorted[:, :n].sum(axis=1) / np.maximum(cur_total, 1e-300)
        return np.where(ok, cur_share - ref_share, 0.0)
    n_seen = (ref > 0).sum(axis=1, keepdims=True)  # deciles of the items the reference saw, by popularity rank
    position = np.arange(ref.shape[1])[None, :]
    seen = position < n_seen  # sorted descending: the seen items come first
    decile = np.clip(np.ceil((position + 1) / np.maximum(n_seen, 1) * 10), 1, 10).astype(int) - 1
    cell = (np.arange(len(ref))[:, None] * 10 + decile)[seen]
    ref_h = np.bincount(cell, weights=ref_sorted[seen], minlength=len(ref) * 10).reshape(len(ref), 10)
    cur_h = np.bincount(cell, weights=cur_sorted[seen], minlength=len(ref) * 10).reshape(len(ref), 10)
    return _distance(signal, None, ref_h, cur_h)


def _distance(signal: Signal, obs: _Observed | None, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Distance per row of the (B x K) weighted histograms ``ref`` and ``cur``; 0 when a side is empty."""
    rs, cs = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    ok = (rs[:, 0] > 0) & (cs[:, 0] > 0)
    p = np.divide(ref, rs, out=np.zeros_like(ref), where=rs > 0)
    q = np.divide(cur, cs, out=np.zeros_like(cur), where=cs > 0)
    if signal.method == "share":  # one-sided: the current window's first-bin share above the reference's
        return np.where(ok, q[:, 0] - p[:, 0], 0.0)
    if signal.method == "jensenshannon":
        m = (p + q) / 2
        kl = _xlogy(p, p, m) + _xlogy(q, q, m)
        d = np.sqrt(np.maximum(kl.sum(axis=1) / 2, 0.0))
    elif signal.method == "psi":
        pe, qe = np.where(p > 0, p, PSI_EPS), np.where(q > 0, q, PSI_EPS)
        d = ((pe - qe) * np.log(pe / qe)).sum(axis=1)
    else:
        x = np.asarray(obs.support, float)
        if len(x) < 2 or obs.pooled_sd <= 0:
            return np.zeros(len(p))
        gap = np.abs(np.cumsum(p, axis=1)[:, :-1] - np.cumsum(q, axis=1)[:, :-1]) @ np.diff(x)
        d = gap / obs.pooled_sd
    return np.where(ok, d, 0.0)


def _xlogy(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(a[pos] / b[pos])
    return out


# --------------------------------------------------------------------------- verdict


def _result(signal: Signal, obs: _Observed, note: str, calibrated: dict[str, tuple[float, float, float]], settings: DriftSettings) -> SignalResult:
    value, threshold, p_value = calibrated.get(signal.name, (0.0, 0.0, 1.0))
    if not note and not (math.isfinite(value) and math.isfinite(threshold)):
        note = f"score not finite ({value}, threshold {threshold})"
    tested = not note
    return SignalResult(
        name=signal.name,
        method=signal.method,
        value=value if tested else 0.0,
        threshold=threshold if tested else float(settings.floors.get(signal.name, settings.stattest_threshold)),
        drifted=bool(tested and value > threshold),
        tested=tested,
        n_reference=int(obs.users[0]),
        n_current=int(obs.users[1]),
        note=note,
        p_value=p_value if tested else 1.0,
    )


def _verdict(
    results: tuple[SignalResult, ...],
    reason: str,
    reference_rows: int,
    current_rows: int,
    settings: DriftSettings,
    paths: tuple[str, str],
) -> DriftReport:
    """Severity from the drifted signals, with the numbers that decided it."""
    tested = [r for r in results if r.tested]
    drifted = [r for r in tested if r.drifted]
    share = len(drifted) / len(tested) if tested else 0.0
    strongest = max((r.value / r.threshold if r.threshold > 0 else math.inf for r in drifted), default=0.0)
    severity = "none"
    if drifted and (share >= settings.major_share or strongest >= settings.major_ratio):
        severity = "major"
    elif drifted and (len(drifted) >= settings.min_drifted_signals or share >= settings.minor_share):
        severity = "minor"
    if not reason:
        reason = _explain(severity, drifted, len(tested), share, strongest, settings)
    return DriftReport(
        signals=results,
        drifted_share=float(share),
        severity=severity,
        reason=reason,
        minor_share=float(settings.minor_share),
        major_share=float(settings.major_share),
        reference_rows=int(reference_rows),
        current_rows=int(current_rows),
        json_path=paths[0],
        html_path=paths[1],
        alpha=float(settings.alpha),
        permutations=int(settings.permutations),
    )


def _explain(severity: str, drifted: list[SignalResult], n_tested: int, share: float, strongest: float, settings: DriftSettings) -> str:
    if n_tested == 0:
        return "no signal could be tested: no drift declared"
    head = f"{len(drifted)} of {n_tested} tested signals drifted (share {share:.2f}"
    ratio = "inf" if math.isinf(strongest) else f"{strongest:.2f}"
    rule = {
        "major": f"; major_share {settings.major_share:.2f}, strongest {ratio}x threshold vs major_ratio {settings.major_ratio:.2f})",
        "minor": f"; at least min_drifted_signals {settings.min_drifted_signals} or minor_share {settings.minor_share:.2f})",
        "none": f"; thresholds at family-wise alpha {settings.alpha:g})",
    }[severity]
    names = ", ".join(f"{r.name} {r.value:.3f} > {r.threshold:.3f}" for r in drifted)
    return head + rule + (": " + names if names else "")


# --------------------------------------------------------------------------- files


def _write_files(report: DriftReport, tested: list[Signal], observed: dict[str, _Observed], out_dir: Path) -> tuple[str, str]:
    """Evidently's report of the tested signals (drawn at our thresholds) and the verdict as JSON."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    thresholds = {r.name: r.threshold for r in report.signals}
    drawn = [s for s in tested if _labels(s, observed[s.name], "ref") is not None]
    frames = {}
    for side in ("ref", "cur"):
        frames[side] = pd.DataFrame({s.name: pd.Series(_labels(s, observed[s.name], side)) for s in drawn})
    definition = DataDefinition(
        numerical_columns=[s.name for s in drawn if not s.categorical],
        categorical_columns=[s.name for s in drawn if s.categorical],
    )
    metrics = [
        ValueDrift(column=s.name, method="z") if s.method.startswith("share")
        else ValueDrift(column=s.name, method=s.method, threshold=max(thresholds[s.name], 1e-9))
        for s in drawn
    ]
    snapshot = Report(metrics, tags=["drift"]).run(
        Dataset.from_pandas(frames["cur"], data_definition=definition),
        Dataset.from_pandas(frames["ref"], data_definition=definition),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"verdict": report.to_dict(), "evidently": json.loads(snapshot.json())}
    json_path = _write_atomic(out_dir / "drift.json", json.dumps(payload, indent=1, default=str))
    html_path = _write_atomic(out_dir / "drift.html", snapshot.get_html_str(as_iframe=False))
    return str(json_path), str(html_path)


def _labels(signal: Signal, obs: _Observed, side: str) -> np.ndarray | None:
    """Per-row values Evidently draws for ``signal`` on ``side``; None when it has no reference analogue."""
    prefix = {"item_popularity_decile": "decile_", "top_items_share": "top_", "new_item_share": "new_"}.get(signal.name, "")
    return obs.labels.get(prefix + side)


def _write_atomic(path: Path, text: str) -> Path:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
