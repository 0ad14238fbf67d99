"""Drift between a reference window and a current window of interactions.

Evidently's stock drift preset would treat ``user_id`` and ``item_id`` as numbers, so
its verdict would describe id ranges, not behaviour. Instead we derive signals that
a recommender team can act on (who rates, what they rate, how they rate, when) and
test each one with a threshold calibrated for this pair of windows.

Signals (value: distance between the weighted histograms of the two windows):

======================  ===========  =============  ====================================
signal                  unit         method         meaning
======================  ===========  =============  ====================================
rating                  interaction  wasserstein    rating inflation / deflation
item_popularity_decile  interaction  jensenshannon  head vs long-tail consumption
is_new_item             interaction  psi            share of interactions on cold items
is_new_user             interaction  psi            share of interactions by cold users
hour_of_day             interaction  jensenshannon  daily rhythm (UTC)
day_of_week             interaction  jensenshannon  weekly rhythm (UTC)
item_release_year       interaction  wasserstein    age of what is consumed (0 = unknown, left out)
user_activity           user         wasserstein    log2 interactions per active user
user_age                user         wasserstein    who is active (0 = unknown, left out)
genre                   genre        jensenshannon  genre mix ("|"-split; "" -> "(none)")
prediction_score        interaction  wasserstein    champion's scores (only when scores are given)
======================  ===========  =============  ====================================

Why thresholds are calibrated, not fixed. A week of MovieLens-100K holds 36-70 users
and one user can make 13 % of its ratings, so rows are far from independent: a fixed
threshold on a per-row statistic flags every real week. Here the *user* is the unit:

* a user's rows weigh ``n_rows ** -user_weight_power`` (0.5 by default), so heavy users
  count more than light ones but do not drown them;
* the per-check null distribution of every signal comes from ``permutations`` random
  re-assignments of the pooled users to the two windows (users past ``max_units`` per
  side are pooled into random groups first, which keeps the test exact and the cost
  bounded);
* the thresholds are set jointly (Westfall-Young min-p) so that the chance of *any*
  tested signal drifting on exchangeable windows is ``alpha``. A signal's threshold is
  the matching quantile of its permutation distribution, floored by
  ``stattest_threshold`` / ``floors``; it drifts when ``value > threshold``;
* a signal with fewer than ``min_users`` users on a side is not tested (note says why).

Wasserstein distances are divided by the pooled spread of both windows (which the
permutations do not change), not by the reference's spread, so a constant or one-row
reference cannot blow them up; a single support point gives 0.

History-dependent signals (popularity deciles, newness) cannot be labelled with
statistics fitted on the window itself, so the reference is split in time into an early
and a late half: deciles rank items by their count in the early half and label the late
half and the current window; late-half rows are new when absent from the early half,
current rows when absent from the late half. On the reference side these signals
observe the late half only. Calendar signals are only tested when both windows cover at
least 90 % of the cycle (a day for ``hour_of_day``, a week for ``day_of_week``).

Severity: "major" when the drifted share of tested signals reaches ``major_share`` or one
signal reaches ``major_ratio`` times its threshold; "minor" when at least
``min_drifted_signals`` signals (default 1) drifted or the share reaches ``minor_share``;
else "none". An empty window gives severity "none", no signals, no files and a
``reason``. Missing columns raise :class:`~pipeline.errors.DataError`.

The verdict is computed from the histograms above (fast: no Evidently call). When an
``out_dir`` is given, ``drift.json`` holds the verdict (plus Evidently's snapshot) and
``drift.html`` is Evidently's report of the same signals, one ``ValueDrift`` per tested
signal drawn at its calibrated threshold. Evidently scores the plain per-row columns with
its own normalisation, so its numbers can differ from the verdict's; the verdict is ours.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.settings import DriftSettings

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
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Signal:
    """How one signal is observed and tested."""

    name: str
    unit: str  # "interaction" | "user" | "genre"
    method: str
    categorical: bool
    cycle: pd.Timedelta | None = None  # calendar signals: span a window must cover


SIGNALS: tuple[Signal, ...] = (
    Signal("rating", "interaction", "wasserstein", False),
    Signal("item_popularity_decile", "interaction", "jensenshannon", True),
    Signal("is_new_item", "interaction", "psi", True),
    Signal("is_new_user", "interaction", "psi", True),
    Signal("hour_of_day", "interaction", "jensenshannon", True, pd.Timedelta(days=1)),
    Signal("day_of_week", "interaction", "jensenshannon", True, pd.Timedelta(days=7)),
    Signal("item_release_year", "interaction", "wasserstein", False),
    Signal("user_activity", "user", "wasserstein", False),
    Signal("user_age", "user", "wasserstein", False),
    Signal("genre", "genre", "jensenshannon", True),
)
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
    """One signal's observations as a (units x bins) weighted count matrix."""

    counts: np.ndarray  # (n_ref_units + n_cur_units, K)
    support: np.ndarray  # bin values (numeric) or labels (categorical)
    users: tuple[int, int]  # users with an observation on each side
    note: str = ""
    pooled_sd: float = 0.0
    n_ref_units: int = 0  # rows [0, n_ref_units) of counts are the reference's units
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # per-row values for Evidently


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path | None,
    settings: DriftSettings,
    *,
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
) -> DriftReport:
    """Compare ``current`` with ``reference`` on designed signals.

    Args:
        reference, current: windows in the data stage's contract (``REQUIRED_COLUMNS`` at least).
        out_dir: where ``drift.json`` and ``drift.html`` go (atomically); None writes nothing.
        settings: thresholds and calibration (``Settings.drift``).
        reference_scores, current_scores: optional champion scores, one per row of the
            window in row order; both given adds the ``prediction_score`` signal.

    Returns:
        The verdict; see the module docstring for signals, calibration and severity.
    """
    for name, window in (("reference", reference), ("current", current)):
        missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
        if missing:
            raise DataError(f"{name} window lacks column(s) {', '.join(missing)}")
    for name, window, scores in (("reference", reference, reference_scores), ("current", current, current_scores)):
        if scores is not None and len(scores) != len(window):
            raise DataError(f"{name}_scores has {len(scores)} values for {len(window)} rows")
    empty = [name for name, w in (("reference", reference), ("current", current)) if w.empty]
    if empty:
        reason = f"{' and '.join(empty)} window empty: nothing to compare, no drift declared"
        return _verdict((), reason, len(reference), len(current), settings, ("", ""))

    with_scores = reference_scores is not None or current_scores is not None
    signals = SIGNALS + ((SCORE_SIGNAL,) if with_scores else ())
    signals = tuple(_configured(s, settings) for s in signals)
    observed = _observe(reference, current, signals, settings, reference_scores, current_scores)
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


def _configured(signal: Signal, settings: DriftSettings) -> Signal:
    method = settings.methods.get(signal.name, signal.method)
    if method not in METHODS:
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
) -> dict[str, _Observed]:
    """Every signal as a (units x bins) matrix; units are users (or random groups of users)."""
    order = np.argsort(reference["timestamp"].to_numpy(), kind="stable")
    ref = reference.iloc[order]
    ref_scores = None if reference_scores is None else np.asarray(reference_scores, float)[order]
    n_early = len(ref) // 2
    rng = np.random.default_rng(settings.seed)
    r_unit, r_users, r_weight = _units(ref["user_id"].to_numpy(), settings, rng)
    c_unit, c_users, c_weight = _units(current["user_id"].to_numpy(), settings, rng)
    n_ref_units = int(r_unit.max()) + 1
    units = np.concatenate([r_unit, c_unit + n_ref_units])
    n_units = n_ref_units + int(c_unit.max()) + 1
    weight = np.concatenate([r_weight, c_weight])
    user_key = np.concatenate([r_users, c_users + r_users.max() + 1])  # distinct users per side
    side = np.concatenate([np.zeros(len(ref), bool), np.ones(len(current), bool)])
    late = np.concatenate([np.arange(len(ref)) >= n_early, np.ones(len(current), bool)])

    both = pd.concat([ref[list(REQUIRED_COLUMNS)], current[list(REQUIRED_COLUMNS)]], ignore_index=True)
    ts = both["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    items = both["item_id"].to_numpy()
    users = both["user_id"].to_numpy()
    early_items = items[:n_early]
    history_items = np.where(side, np.isin(items, items[n_early : len(ref)]), np.isin(items, early_items))
    history_users = np.where(side, np.isin(users, users[n_early : len(ref)]), np.isin(users, users[:n_early]))

    def rows(name: str, codes: np.ndarray, support: np.ndarray, mask: np.ndarray | None = None, **kw) -> None:
        keep = codes >= 0 if mask is None else (codes >= 0) & mask
        out[name] = _matrix(units[keep], codes[keep], weight[keep], n_units, len(support), support, side[keep], user_key[keep], **kw)

    out: dict[str, _Observed] = {}
    wanted = {s.name: s for s in signals}
    rows("rating", *_numeric(both["rating"].to_numpy(float)))
    deciles = _popularity_deciles(early_items)
    dec = pd.Index(deciles.index).get_indexer(items)
    dec_codes = np.where(dec >= 0, deciles.to_numpy()[np.maximum(dec, 0)] - 1, -1) if len(deciles) else np.full(len(items), -1)
    rows("item_popularity_decile", dec_codes, np.array([f"d{d:02d}" for d in range(1, 11)], object), late)
    newness = np.array(["new", "seen"], object)
    rows("is_new_item", history_items.astype(int), newness, late)
    rows("is_new_user", history_users.astype(int), newness, late)
    rows("hour_of_day", (ts // 3_600_000_000_000) % 24, np.array([f"{h:02d}" for h in range(24)], object))
    rows("day_of_week", (ts // DAY_NS + 3) % 7, np.array(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], object))
    year = both["item_release_year"].to_numpy(float)
    rows("item_release_year", *_numeric(np.where(year > 0, year, np.nan)))
    if "prediction_score" in wanted:
        scores = [s if s is not None else np.full(n, np.nan) for s, n in ((ref_scores, len(ref)), (current_scores, len(current)))]
        rows("prediction_score", *_numeric(np.concatenate(scores)))
        if reference_scores is None or current_scores is None:
            out["prediction_score"].note = "scores given for one window only"

    # user-level signals: one observation per (side, user), weight 1
    first = np.unique(user_key, return_index=True)[1]
    per_user = pd.Series(user_key).value_counts(sort=False).reindex(user_key[first]).to_numpy()
    u_units, u_side, u_key = units[first], side[first], user_key[first]
    ones = np.ones(len(first))
    act_codes, act_support = _numeric(np.log2(per_user.astype(float)))
    out["user_activity"] = _matrix(u_units, act_codes, ones, n_units, len(act_support), act_support, u_side, u_key)
    age = both["user_age"].to_numpy(float)[first]
    age_codes, age_support = _numeric(np.where(age > 0, age, np.nan))
    keep = age_codes >= 0
    out["user_age"] = _matrix(u_units[keep], age_codes[keep], ones[keep], n_units, len(age_support), age_support, u_side[keep], u_key[keep])

    # genre: (unit x item) weights times an (item x genre) indicator
    item_codes, item_index = pd.factorize(items)
    genre_of = pd.Series(both["item_genres"].to_numpy(), index=item_codes).groupby(level=0).first().reindex(range(len(item_index)))
    split = genre_of.fillna("").astype(str).str.split("|").explode()
    split = split.replace("", "(none)")
    g_codes, g_labels = pd.factorize(split.to_numpy())
    import scipy.sparse as sp

    indicator = sp.csr_matrix((np.ones(len(g_codes)), (split.index.to_numpy(), g_codes)), shape=(len(item_index), len(g_labels)))
    unit_item = sp.csr_matrix((weight, (units, item_codes)), shape=(n_units, len(item_index)))
    counts = np.asarray((unit_item @ indicator).todense())
    genre_rows = np.asarray(indicator.sum(axis=1)).ravel()[item_codes] > 0
    out["genre"] = _Observed(
        counts, np.asarray(g_labels, object), _user_counts(side[genre_rows], user_key[genre_rows]),
        labels={"ref": _genre_labels(both["item_genres"], ~side), "cur": _genre_labels(both["item_genres"], side)},
    )
    for obs in out.values():
        obs.n_ref_units = n_ref_units
    return {name: out[name] for name in wanted}


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
    g = genres[mask].fillna("").astype(str).str.split("|").explode()
    return g.replace("", "(none)").to_numpy(dtype=object)


def _popularity_deciles(item_ids: np.ndarray) -> pd.Series:
    """Decile (1 = most popular tenth of items, ties share a decile) per item of ``item_ids``."""
    counts = pd.Series(item_ids).value_counts()
    if counts.empty:
        return pd.Series(dtype="int64")
    rank = counts.rank(ascending=False, method="min")
    return np.ceil(rank / len(counts) * 10).clip(1, 10).astype("int64")


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
    blocks = [observed[s.name].counts for s in tested]
    widths = np.cumsum([0] + [b.shape[1] for b in blocks])
    data = np.hstack(blocks)
    n_ref = observed[tested[0].name].n_ref_units
    total = data.sum(axis=0)
    obs_ref = data[:n_ref].sum(axis=0, keepdims=True)
    value = np.array([_distance(s, observed[s.name], obs_ref[:, a:b], total[a:b] - obs_ref[:, a:b])[0] for s, a, b in zip(tested, widths, widths[1:])])
    rng = np.random.default_rng(settings.seed)
    n_units, b_total = data.shape[0], settings.permutations
    perm = np.empty((b_total, len(tested)))
    for start in range(0, b_total, 250):
        b = min(250, b_total - start)
        keys = rng.random((b, n_units))
        pick = np.zeros((b, n_units))
        idx = np.argpartition(keys, n_ref - 1, axis=1)[:, :n_ref] if n_ref < n_units else np.tile(np.arange(n_units), (b, 1))
        np.put_along_axis(pick, idx, 1.0, axis=1)
        ref_h = pick @ data
        for j, (s, a, c) in enumerate(zip(tested, widths, widths[1:])):
            perm[start : start + b, j] = _distance(s, observed[s.name], ref_h[:, a:c], total[a:c] - ref_h[:, a:c])
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


def _distance(signal: Signal, obs: _Observed, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Distance per row of the (B x K) weighted histograms ``ref`` and ``cur``; 0 when a side is empty."""
    rs, cs = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    ok = (rs[:, 0] > 0) & (cs[:, 0] > 0)
    p = np.divide(ref, rs, out=np.zeros_like(ref), where=rs > 0)
    q = np.divide(cur, cs, out=np.zeros_like(cur), where=cs > 0)
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
    frames = {}
    for side in ("ref", "cur"):
        cols = {s.name: pd.Series(observed[s.name].labels[side]) for s in tested}
        frames[side] = pd.DataFrame(cols)
    definition = DataDefinition(
        numerical_columns=[s.name for s in tested if not s.categorical],
        categorical_columns=[s.name for s in tested if s.categorical],
    )
    metrics = [ValueDrift(column=s.name, method=s.method, threshold=max(thresholds[s.name], 1e-9)) for s in tested]
    snapshot = Report(metrics, tags=["drift"]).run(
        Dataset.from_pandas(frames["cur"], data_definition=definition),
        Dataset.from_pandas(frames["ref"], data_definition=definition),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"verdict": report.to_dict(), "evidently": json.loads(snapshot.json())}
    json_path = _write_atomic(out_dir / "drift.json", json.dumps(payload, indent=1, default=str))
    html_path = _write_atomic(out_dir / "drift.html", snapshot.get_html_str(as_iframe=False))
    return str(json_path), str(html_path)


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
