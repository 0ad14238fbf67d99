"""Decision-quality benchmark: the promotion gate and the auto-revert monitor on a MovieLens-100K replay.

Protocol. The last ``N_WINDOWS`` full weeks of MovieLens-100K are replayed, one
window ``[start, start + 7 d)`` at a time; a window's history is every
interaction before its start. Every model is the real two-tower model
(``recsys_retrain.train.loop.train`` with ``TrainSettings(epochs=4, seed=...)``), every version lives
in a real MLflow registry on SQLite in a temporary folder (models are logged
with ``registry.candidates.log_candidate`` and loaded back from the registry), every
promotion decision is ``recsys_retrain.gate.decide`` on ``recsys_retrain.evaluate.user_metrics``
of challenger and champion on the same window, applied with
``registry.promotion.apply_decision``, and every revert decision is ``recsys_retrain.monitor.check_window``.
Models are trained once per training seed (``SEEDS``) and reused across the scenarios:

``good[w]``  trained on the history of window ``w`` (what the pipeline would train).
``seed_old`` / ``seed_mid``  trained on the history of two and one weeks before the
    first window: the sound champion/previous pair the replays start from.

Scenarios, each in its own registry:

1. clean replay, once per training seed: starts with ``seed_old`` -> ``seed_mid`` promoted by
   hand; on every window the monitor checks champion vs previous, then ``good[w]`` is gated
   against the champion. Counts false reverts (any revert here) and false promotions:
   a promoted challenger whose mean NDCG@10 on the *next* window is below the mean
   NDCG@10 of the champion it replaced (the one that would have been kept) on that
   next window. Both are loaded back from the registry and scored on window ``w + 1``
   with its own history (which includes window ``w``); a promotion on the last window has
   no next window and is not judged. (On its own window a promoted challenger cannot be
   worse: the gate requires a gain there.)
2. bad challengers (training seed ``SEED``), injected at ``BAD_WINDOWS`` against the champion ``good[w-1]``:
   ``shuffled`` (trained on the window's history with item ids permuted by a random
   bijection), ``corrupted`` (``good[w]`` with the item tower's ``t_item_id`` table
   replaced by random values at the trained table's scale), ``oldest`` (trained only
   on the first ``OLDEST_WEEKS`` weeks of the data). Each must be rejected.
3. near-threshold challengers, for every seed, every window ``1 <= w <= N - 2`` and every level in
   ``LEVELS`` (5 %, 10 %, 20 %): the champion is ``good[w-1]``; the challenger is a model with
   per-user Gaussian noise added to its scores (:class:`NoisyModel`), whose noise level is
   calibrated (``scipy.optimize.brentq``) so that its NDCG@10, pooled over the later windows
   ``w+1 .. N-1`` (out of sample for both models, never the gate's window ``w``), is the level
   below the champion's there: its true quality, going forward, is that much worse. Two bases:
   ``retrain``, the fresh retrain ``good[w]`` (what the pipeline would propose; it can look
   better than the champion on the small gate window by chance, which is what the gate must
   see through), and ``champion_copy``, the champion itself (its paired differences are one-sided,
   so it only passes if the noise happens to help on the gate's window). A retrain that is
   already more than the level worse than the champion without noise cannot be calibrated and is
   counted in ``not_calibrated``, not gated. The gate judges each challenger on window ``w``, where
   the achieved degradation is a noisy draw around the level (reported per case). Results under
   ``near_threshold[<level>]`` with ``<level>`` the target relative NDCG@10 degradation as a
   fraction, ``"0.05"``, ``"0.10"``, ``"0.20"``: the ``retrain`` challengers' ``cases``,
   ``rejected_share`` (with a Wilson 95 % interval, ``scipy.stats.binomtest``) and mean achieved
   degradation on the gate's window and on the calibration pool, with the same figures for the
   ``champion_copy`` challengers under ``near_threshold[<level>]["champion_copy"]``; the goals
   are on the ``retrain`` figures.
4. degrading champion (training seed ``SEED``): ``seed_old`` is previous, ``seed_mid`` wrapped in
   :class:`DegradingModel` is champion; from window ``DEGRADE_FROM`` on its scores
   get strong Gaussian noise. The monitor runs on every window; the revert must
   come within 2 windows of the onset (delay 1 = reverted on the onset window);
   a revert before the onset is a false revert.

``gate_s`` is the longest wall time of one whole gate step (load the registered
challenger and the champion from MLflow, score both on the window, bootstrap
decision, apply it to the registry). ``goals`` holds every goal in ``GOALS`` with whether the
figures meet it. Writes bench/results/decisions.json.

``--smoke``: every scenario on ``SMOKE`` (a quarter of the users, three windows, one bad
window, one epoch per model, one seed), written to ``--out`` or a temporary folder, never bench/results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import brentq
from scipy.stats import binomtest
from torch import nn

from recsys_retrain import monitor
from recsys_retrain.evaluate import (
    UserEval,
    ndcg_at_k,
    ranking,
    topk_hits,
    user_metrics,
)
from recsys_retrain.gate import GateDecision, decide, paired_bootstrap
from recsys_retrain.registry import candidates, promotion
from recsys_retrain.settings import Settings, TrainSettings
from recsys_retrain.train.checkpoints import load_checkpoint
from recsys_retrain.train.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file (tests/test_bench_decisions.py) too
from quality import frames  # noqa: E402  (bench/ is not a package)

RESULTS = Path(__file__).resolve().parent / "results" / "decisions.json"
N_WINDOWS = 10
LAST_START = pd.Timestamp("1998-04-13", tz="UTC")  # a Monday; data ends 1998-04-22, the last full week
WEEK = pd.Timedelta(days=7)
EPOCHS = 4
BAD_WINDOWS = (2, 5, 8)  # indices into the replay windows
OLDEST_WEEKS = 4
DEGRADE_FROM = 4  # index of the first window on which the degrading champion is perturbed
NOISE = 3.0  # noise std, in units of the std of the champion's own scores
SEED = 0  # training seed of the bad-challenger and degrading-champion scenarios
SEEDS = (0, 1, 2, 3, 4)  # training seeds (and noise seeds) of the clean replays and the near-threshold challengers
LEVELS = (0.05, 0.10, 0.20)  # near-threshold challengers: true NDCG@10 this share below the champion's
K = 10
SMOKE = {"n_windows": 3, "bad_windows": (1,), "degrade_from": 1, "epochs": 1, "users_every": 4, "seeds": (0,)}
FALSE_PROMOTION_SHARE = 0.2  # goal: at most this share of judged promotions is worse on the next window
NEAR_REJECTED_MIN = {0.05: 0.8, 0.20: 0.95}  # goal: rejected share at these levels at least this
GOALS = {
    "bad_rejected": "== bad_total",
    "revert_delay_windows": "<= 2",
    "false_reverts": "== 0",
    "false_promotions": f"<= {FALSE_PROMOTION_SHARE} of the promotions judged on a next window (and >= 1 judged)",
    "near_threshold_monotone": "rejected_share non-decreasing from 5 % to 10 % to 20 % worse",
    **{f"near_threshold_{level:.2f}": f"rejected_share >= {share}" for level, share in NEAR_REJECTED_MIN.items()},
    "gate_s": "<= 5",
}

log = logging.getLogger("bench.decisions")


# --------------------------------------------------------------------------- helpers (pure, tested)


def level_key(level: float) -> str:
    """The ``near_threshold`` key of a level: the target relative degradation as a fraction, ``0.05``."""
    return f"{level:.2f}"


def replay_windows(last_start: pd.Timestamp = LAST_START, n: int = N_WINDOWS) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``n`` consecutive weekly windows ``[start, start + 7 d)``, the last one starting at ``last_start``."""
    starts = [last_start - WEEK * i for i in range(n - 1, -1, -1)]
    return [(s, s + WEEK) for s in starts]


def window_name(start: pd.Timestamp, end: pd.Timestamp) -> str:
    """The ``start/end`` string the pipeline tags versions and decisions with."""
    return f"{start.isoformat()}/{end.isoformat()}"


def split(inter: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History (everything before ``start``) and the window ``[start, end)``."""
    ts = inter["timestamp"]
    return inter[ts < start], inter[(ts >= start) & (ts < end)]


def permute_items(frame: pd.DataFrame, item_ids: np.ndarray, seed: int) -> pd.DataFrame:
    """The interactions with every item id mapped through one random bijection of the catalogue."""
    ids = np.asarray(item_ids)
    perm = np.random.default_rng(seed).permutation(ids)
    mapping = pd.Series(perm, index=ids)
    return frame.assign(item_id=mapping.reindex(frame["item_id"].to_numpy()).to_numpy().astype(np.int64))


def item_table(model: nn.Module) -> torch.Tensor:
    """The item tower's ``item_id`` embedding table of a ``recsys_retrain.model.Recommender``."""
    return model.model.item_ebc.embedding_bags["t_item_id"].weight


def corrupt_item_table(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose item-id table is random normal at the trained table's own scale."""
    bad = copy.deepcopy(model)
    weight = item_table(bad)
    with torch.no_grad():
        scale = float(weight.std())
        weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)) * scale)
    return bad


class DegradingModel(nn.Module):
    """A champion whose predictions break from a point in time on.

    ``score(users, history)`` is the wrapped model's, plus Gaussian noise of
    ``noise`` times the std of its scores, once ``history`` reaches ``active_from``
    (the history of a window holds everything before the window starts, so with
    ``active_from`` = start of the window *before* the onset window, the noise
    starts exactly on the onset window). The noise is seeded by the user ids, so a
    re-scored window gives the same numbers.
    """

    def __init__(self, inner: nn.Module, active_from: pd.Timestamp, noise: float, seed: int = SEED) -> None:
        super().__init__()
        self.inner = inner
        self.active_from = pd.Timestamp(active_from)
        self.noise = float(noise)
        self.seed = int(seed)

    @property
    def catalogue(self) -> pd.DataFrame:
        return self.inner.catalogue

    def active(self, history: pd.DataFrame | None) -> bool:
        return history is not None and len(history) > 0 and history["timestamp"].max() >= self.active_from

    @torch.no_grad()
    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        scores = self.inner.score(users, history).float()
        if not self.active(history):
            return scores
        seed = self.seed + int(np.asarray(users["user_id"], dtype=np.int64).sum()) % (2**31)
        gen = torch.Generator().manual_seed(seed)
        return scores + torch.randn(scores.shape, generator=gen) * self.noise * scores.std()


def user_noise(user_ids: np.ndarray, n_items: int, seed: int) -> torch.Tensor:
    """``[U, n_items]`` standard normal noise with one fixed row per user id and seed.

    A user's row does not depend on the other users scored with it or on the window,
    so a model that adds it is one fixed model.
    """
    rows = [np.random.default_rng([int(seed), int(u)]).standard_normal(n_items) for u in np.asarray(user_ids)]
    return torch.from_numpy(np.stack(rows)).float() if rows else torch.zeros(0, n_items)


def noise_direction(scores: torch.Tensor, user_ids: np.ndarray, seed: int) -> torch.Tensor:
    """Per-user noise scaled by the std of that user's own scores: what :class:`NoisyModel` adds, per unit sigma."""
    scale = scores.std(dim=1, keepdim=True) if scores.shape[1] > 1 else torch.ones(len(scores), 1)
    return scale * user_noise(user_ids, scores.shape[1], seed)


class NoisyModel(nn.Module):
    """A challenger of controlled, worse quality: a trained model's scores plus per-user Gaussian noise.

    ``score = inner.score + sigma * std(user's scores) * noise[user]``, with the noise row
    fixed per user id and ``seed`` (:func:`user_noise`). ``sigma = 0`` is the inner model.
    """

    def __init__(self, inner: nn.Module, sigma: float, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.sigma = float(sigma)
        self.seed = int(seed)

    @property
    def catalogue(self) -> pd.DataFrame:
        return self.inner.catalogue

    @torch.no_grad()
    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        scores = self.inner.score(users, history).float()
        return scores + self.sigma * noise_direction(scores, users["user_id"].to_numpy(np.int64), self.seed)


@dataclass(frozen=True)
class ScoredWindow:
    """One model's scores on one window's holdout users (those with a new item), as ``user_metrics`` ranks them."""

    user_ids: np.ndarray
    scores: torch.Tensor
    seen: torch.Tensor
    relevant: torch.Tensor
    n_relevant: torch.Tensor


def scored_window(model: Any, history: pd.DataFrame, window_df: pd.DataFrame) -> ScoredWindow:
    """The inputs of ``user_metrics`` for ``model`` on a window, kept so that noise can be re-drawn cheaply."""
    r = ranking(model, history, window_df)
    with torch.no_grad():
        scores = model.score(r.users, history).float() if len(r.users) else torch.zeros(0, len(r.item_ids))
    return ScoredWindow(r.users["user_id"].to_numpy(np.int64), scores, r.seen, r.relevant, r.n_relevant)


def pooled_ndcg(pool: list[ScoredWindow], directions: list[torch.Tensor] | None, sigma: float, k: int = K) -> float:
    """Mean NDCG@k over every user of every window in ``pool``, with ``sigma`` times ``directions`` added."""
    values = []
    for i, w in enumerate(pool):
        scores = w.scores if directions is None or sigma == 0 else w.scores + sigma * directions[i]
        values.append(ndcg_at_k(topk_hits(scores, w.relevant, w.seen, k), w.n_relevant, k))
    return float(torch.cat(values).double().mean())


def calibrate_sigma(pool: list[ScoredWindow], target: float, seed: int, k: int = K,
                    reference: float | None = None) -> tuple[float, float] | None:
    """The noise level at which :class:`NoisyModel` is ``target`` (a share) worse than ``reference`` on ``pool``.

    ``reference`` is a pooled NDCG@k on the same pool (the champion's); by default the
    clean model's own. Root of ``1 - ndcg(sigma) / reference - target`` by
    ``scipy.optimize.brentq``; NDCG of a ranking is a step function of sigma, so the
    achieved degradation (returned second) is the target up to one step. None when the
    clean model is already ``target`` or more below ``reference``: noise cannot make it better.
    """
    directions = [noise_direction(w.scores, w.user_ids, seed) for w in pool]
    base = pooled_ndcg(pool, None, 0.0, k) if reference is None else reference
    if not base > 0:
        raise ValueError(f"the reference NDCG@{k} is {base} on the calibration pool; nothing to degrade")

    def gap(sigma: float) -> float:
        return 1.0 - pooled_ndcg(pool, directions, sigma, k) / base - target

    if gap(0.0) >= 0:
        return None

    high = 0.25
    while gap(high) < 0:
        high *= 2
        if high > 1e4:
            raise ValueError(f"no noise level makes the model {target:.0%} worse on the pool")
    sigma = float(brentq(gap, 0.0, high, xtol=1e-4))
    return sigma, 1.0 - pooled_ndcg(pool, directions, sigma, k) / base


def next_window_check(challenger: Any, champion: Any, history: pd.DataFrame, window_df: pd.DataFrame,
                      k: int = K) -> dict[str, Any]:
    """A promoted challenger against the champion it replaced, on the window after the promotion.

    ``gap`` is challenger - champion mean NDCG@k on the same users (``None`` when the window
    has none), with the paired bootstrap 95 % interval the gate uses; ``worse`` is ``gap < 0``.
    """
    a, b = user_metrics(challenger, history, window_df, k), user_metrics(champion, history, window_df, k)
    if a.n_users == 0:
        return {"challenger_ndcg": None, "champion_ndcg": None, "gap": None, "ci": None, "n_users": 0, "worse": None}
    iv = paired_bootstrap(a.ndcg, b.ndcg, 1000, 0, 0.95)
    return {"challenger_ndcg": a.mean_ndcg, "champion_ndcg": b.mean_ndcg, "gap": iv.mean, "ci": [iv.low, iv.high],
            "n_users": a.n_users, "worse": bool(iv.mean < 0)}


def count_false_promotions(checks: list[dict[str, Any] | None]) -> dict[str, Any]:
    """False promotions among ``checks`` (one per promotion; ``None`` where there is no next window to judge on).

    A promotion is false when the challenger's NDCG@10 on the next window is below the
    kept champion's (``worse``); ``share`` is over the promotions that could be judged.
    """
    judged = [c for c in checks if c is not None and c.get("gap") is not None]
    false = sum(bool(c["worse"]) for c in judged)
    return {"false_promotions": false, "judged": len(judged), "promotions": len(checks),
            "share": false / len(judged) if judged else None}


def rejection_summary(level: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-level figures of the near-threshold challengers: rejected share (Wilson 95 %) and achieved degradation.

    Rows with ``calibrated`` False (no noise level reaches the level) were not gated; they are counted only.
    """
    not_calibrated = sum(r.get("calibrated") is False for r in rows)
    rows = [r for r in rows if r.get("calibrated") is not False]
    n = len(rows)
    rejected = sum(not r["promoted"] for r in rows)
    on_window = np.array([r["achieved_degradation"] for r in rows if r["achieved_degradation"] is not None], float)
    on_pool = np.array([r["calibration_degradation"] for r in rows], float)
    ci = binomtest(rejected, n).proportion_ci(0.95, method="wilson") if n else None
    return {
        "target_degradation": level,
        "cases": n,
        "not_calibrated": not_calibrated,
        "rejected": rejected,
        "rejected_share": rejected / n if n else None,
        "rejected_share_ci95": [ci.low, ci.high] if ci else None,
        "achieved_degradation_mean": float(on_window.mean()) if len(on_window) else None,
        "achieved_degradation_sd": float(on_window.std(ddof=1)) if len(on_window) > 1 else None,
        "achieved_degradation_range": [float(on_window.min()), float(on_window.max())] if len(on_window) else None,
        "achieved_better_on_window": int((on_window < 0).sum()),
        "calibration_degradation_mean": float(on_pool.mean()) if len(on_pool) else None,
        "failed_checks": dict(Counter(c for r in rows for c in r["failed_checks"])),
        "promoted_cases": [{"seed": r["seed"], "window": r["window"], "achieved_degradation": r["achieved_degradation"]}
                           for r in rows if r["promoted"]],
    }


# --------------------------------------------------------------------------- models and gate


class Models:
    """Trains each model once (into a temp folder) and keeps it in memory."""

    def __init__(self, inter: pd.DataFrame, catalogue: pd.DataFrame, root: Path, epochs: int = EPOCHS) -> None:
        self.inter, self.catalogue, self.root, self.epochs = inter, catalogue, root, epochs
        self.cache: dict[str, nn.Module] = {}
        self.train_s: dict[str, float] = {}

    def get(self, key: str, history: pd.DataFrame, seed: int = SEED) -> nn.Module:
        name = f"{key}@seed{seed}"
        if name not in self.cache:
            started = time.perf_counter()
            result = train(history, self.catalogue, self.root / name, TrainSettings(epochs=self.epochs, seed=seed),
                           progress=False)
            self.cache[name] = load_checkpoint(Path(result.checkpoint))
            self.train_s[name] = time.perf_counter() - started
            log.info("trained %s on %d rows in %.1fs", name, len(history), self.train_s[name])
        return self.cache[name]


def register(s: Settings, model: nn.Module, window: str, kind: str) -> int:
    return candidates.log_candidate(model, settings=s, window=window, params={"kind": kind}, metrics={}).version


def gate_step(s: Settings, version: int, history: pd.DataFrame, window_df: pd.DataFrame,
              window: str) -> tuple[GateDecision, bool, float, dict[str, float]]:
    """One gate step as the pipeline runs it, timed: both models from the registry, scored, decided, applied."""
    started = time.perf_counter()
    k, head = s.eval.k, s.gate.head_share
    challenger_model, load_error = candidates.try_load(s, version)
    champ = candidates.champion(s)
    champion_eval: UserEval | None = None
    if champ is not None:
        champion_model, _ = candidates.try_load(s, champ.version)
        if champion_model is not None:
            champion_eval = user_metrics(champion_model, history, window_df, k, head)
    challenger_eval = user_metrics(challenger_model, history, window_df, k, head) if challenger_model else None
    t_decide = time.perf_counter()
    decision = decide(
        challenger_eval, champion_eval, s.gate, challenger_version=version,
        champion_version=champ.version if champ else None, window=window, load_error=load_error,
        reverted_on=promotion.reverted_on(s, version),
    )
    decide_s = time.perf_counter() - t_decide
    promoted = promotion.apply_decision(decision, s, actor="bench gate")
    return decision, promoted, time.perf_counter() - started, {"decide_s": decide_s}


def decision_row(d: GateDecision, promoted: bool, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "challenger_version": d.challenger_version,
        "champion_version": d.champion_version,
        "challenger_ndcg": d.challenger_value,
        "champion_ndcg": d.champion_value,
        "mean_delta": d.mean_delta,
        "ci": [d.ci_low, d.ci_high],
        "n_users": d.n_users,
        "promoted": promoted,
        "failed_checks": [c.name for c in d.failed],
        "reason": d.reason,
        "gate_s": round(seconds, 3),
        **{k: round(v, 4) for k, v in extra.items()},
    }


def monitor_row(d: monitor.RevertDecision) -> dict[str, Any]:
    last = d.windows[-1] if d.windows else None
    return {
        "champion_version": d.champion_version,
        "previous_version": d.previous_version,
        "champion_ndcg": last.champion_ndcg if last else None,
        "previous_ndcg": last.previous_ndcg if last else None,
        "mean_delta": last.mean_delta if last else None,
        "ci": [last.ci_low, last.ci_high] if last else None,
        "worse": last.worse if last else None,
        "consecutive": d.consecutive,
        "reverted": d.reverted,
        "reason": d.reason,
    }


# --------------------------------------------------------------------------- scenarios


def clean_replay(s: Settings, models: Models, inter: pd.DataFrame, wins: list, seeds: dict,
                 seed: int = SEED) -> dict[str, Any]:
    old = register(s, seeds["seed_old"], seeds["old_window"], "seed_old")
    mid = register(s, seeds["seed_mid"], seeds["mid_window"], "seed_mid")
    promotion.promote(s, old, reason="benchmark seed: first champion", actor="bench")
    promotion.promote(s, mid, reason="benchmark seed: sound successor", actor="bench")
    rows, false_reverts, times = [], 0, []
    for i, (start, end) in enumerate(wins):
        history, window_df = split(inter, start, end)
        name = window_name(start, end)
        mon = monitor.check_window(s, history, window_df, name)
        false_reverts += int(mon.reverted)
        version = register(s, models.get(f"good{i}", history, seed), name, "good")
        d, promoted, secs, extra = gate_step(s, version, history, window_df, name)
        times.append(secs)
        rows.append({"window": name, "rows": len(window_df), "monitor": monitor_row(mon),
                     "gate": decision_row(d, promoted, secs, extra)})
        champ = "none" if d.champion_value is None else f"{d.champion_value:.4f}"
        log.info("clean seed %d %s: monitor %s | gate v%s %.4f vs champion %s -> %s", seed, name[:10],
                 "REVERT" if mon.reverted else "ok", version, d.challenger_value, champ,
                 "promote" if promoted else "keep")
    checks = []
    for i, row in enumerate(rows):  # each promotion judged on the next window, both versions from the registry
        gate = row["gate"]
        if not gate["promoted"]:
            continue
        check = None
        if i + 1 < len(wins) and gate["champion_version"] is not None:
            challenger, _ = candidates.try_load(s, gate["challenger_version"])
            kept, _ = candidates.try_load(s, gate["champion_version"])
            check = {"next_window": window_name(*wins[i + 1]),
                     **next_window_check(challenger, kept, *split(inter, *wins[i + 1]))}
            gap = math.nan if check["gap"] is None else check["gap"]
            log.info("clean seed %d %s: promoted v%s vs kept v%s on the next window: %+.4f", seed, row["window"][:10],
                     gate["challenger_version"], gate["champion_version"], gap)
        row["next_window"] = check
        checks.append({"seed": seed, "window": row["window"], "version": gate["challenger_version"],
                       "kept": gate["champion_version"], **(check or {"gap": None, "worse": None})})
    counted = count_false_promotions(checks)
    return {"seed": seed, "windows": rows, "false_reverts": false_reverts, **counted,
            "false_promotion_checks": checks, "promotion_followups": followups(rows), "gate_s": times}


def followups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each promotion, the monitor's champion - previous NDCG@10 on the windows after it.

    ``false_promotions`` judges a promotion on the next window only; this shows whether
    the promoted version stayed at least as good as the one it replaced as long as it was champion.
    """
    out = []
    for i, row in enumerate(rows):
        gate = row["gate"]
        if not gate["promoted"]:
            continue
        later = [
            {"window": r["window"], "mean_delta": r["monitor"]["mean_delta"], "ci": r["monitor"]["ci"]}
            for r in rows[i + 1:]
            if r["monitor"]["champion_version"] == gate["challenger_version"] and r["monitor"]["ci"] is not None
        ]
        out.append({"window": row["window"], "version": gate["challenger_version"],
                    "replaced": gate["champion_version"], "later_windows": later,
                    "later_windows_worse_on_mean": sum(w["mean_delta"] < 0 for w in later)})
    return out


def bad_challengers(home: Path, models: Models, inter: pd.DataFrame, wins: list,
                    bad_windows: tuple[int, ...] = BAD_WINDOWS) -> dict[str, Any]:
    catalogue_ids = models.catalogue["item_id"].to_numpy()
    first = inter["timestamp"].min().normalize()
    oldest_history = inter[inter["timestamp"] < first + OLDEST_WEEKS * WEEK]
    rows, times = [], []
    for i in bad_windows:
        start, end = wins[i]
        history, window_df = split(inter, start, end)
        prev_history, _ = split(inter, *wins[i - 1])
        name = window_name(start, end)
        champion_model = models.get(f"good{i - 1}", prev_history, SEED)
        good_model = models.get(f"good{i}", history, SEED)
        bad = {
            "shuffled": models.get(f"shuffled{i}", permute_items(history, catalogue_ids, SEED + i), SEED),
            "corrupted": corrupt_item_table(good_model, SEED + i),
            "oldest": models.get("oldest", oldest_history, SEED),
        }
        good_ndcg = user_metrics(good_model, history, window_df, 10).mean_ndcg
        for kind, model in bad.items():
            s = Settings(home=home, model_name=f"bad_{kind}_w{i}")
            champ = register(s, champion_model, window_name(*wins[i - 1]), "good")
            promotion.promote(s, champ, reason="benchmark: champion before the injection", actor="bench")
            version = register(s, model, name, kind)
            d, promoted, secs, extra = gate_step(s, version, history, window_df, name)
            times.append(secs)
            rows.append({"window": name, "kind": kind, "rejected": not promoted,
                         "good_challenger_ndcg": good_ndcg, **decision_row(d, promoted, secs, extra)})
            log.info("bad %s %s: %.4f vs champion %.4f (good %.4f) -> %s [%s]", kind, name[:10], d.challenger_value,
                     d.champion_value, good_ndcg, "PROMOTED" if promoted else "rejected",
                     ",".join(c.name for c in d.failed))
    return {"challengers": rows, "bad_rejected": sum(r["rejected"] for r in rows), "bad_total": len(rows),
            "gate_s": times}


def near_threshold(home: Path, models: Models, inter: pd.DataFrame, wins: list, seeds: tuple[int, ...] = SEEDS,
                   levels: tuple[float, ...] = LEVELS) -> dict[str, Any]:
    """Challengers whose true NDCG@10 is each level below the champion's, gated on windows ``1 .. N-2``."""
    rows, times = [], []
    for seed in seeds:
        for w in range(1, len(wins) - 1):
            history, window_df = split(inter, *wins[w])
            name = window_name(*wins[w])
            champion = models.get(f"good{w - 1}", split(inter, *wins[w - 1])[0], seed)
            bases = {"retrain": models.get(f"good{w}", history, seed), "champion_copy": champion}
            pool_windows = list(range(w + 1, len(wins)))  # out of sample for both models; not the gate's window
            pool_frames = [split(inter, *wins[j]) for j in pool_windows]
            pools = {base: [scored_window(model, *f) for f in pool_frames] for base, model in bases.items()}
            reference = pooled_ndcg(pools["champion_copy"], None, 0.0)
            for base, model in bases.items():
                clean = 1.0 - pooled_ndcg(pools[base], None, 0.0) / reference
                for level in levels:
                    case = {"seed": seed, "window": name, "base": base, "level": level,
                            "calibration_windows": [window_name(*wins[j]) for j in pool_windows],
                            "calibration_users": int(sum(len(p.user_ids) for p in pools[base])),
                            "clean_degradation": clean}
                    calibrated = calibrate_sigma(pools[base], level, seed, reference=reference)
                    if calibrated is None:
                        rows.append({**case, "calibrated": False})
                        log.info("near seed %d %s %s %s: already %.1f%% worse on the pool, not gated", seed,
                                 name[:10], base, level_key(level), 100 * clean)
                        continue
                    sigma, pool_degradation = calibrated
                    s = Settings(home=home, model_name=f"near_s{seed}_w{w}_{base}_{level_key(level)}")
                    champ = register(s, champion, window_name(*wins[w - 1]), "good")
                    promotion.promote(s, champ, reason="benchmark: champion before the near-threshold challenger",
                                      actor="bench")
                    version = register(s, NoisyModel(model, sigma, seed), name, f"noisy_{base}_{level_key(level)}")
                    d, promoted, secs, extra = gate_step(s, version, history, window_df, name)
                    times.append(secs)
                    achieved = (1.0 - d.challenger_value / d.champion_value
                                if d.champion_value and math.isfinite(d.challenger_value) else None)
                    rows.append({**case, "calibrated": True, "sigma": sigma,
                                 "calibration_degradation": pool_degradation, "achieved_degradation": achieved,
                                 **decision_row(d, promoted, secs, extra)})
                    log.info("near seed %d %s %s %s: sigma %.3f, %.1f%% worse on the pool, %.1f%% on the window -> "
                             "%s [%s]", seed, name[:10], base, level_key(level), sigma, 100 * pool_degradation,
                             100 * (achieved if achieved is not None else math.nan),
                             "PROMOTED" if promoted else "rejected", ",".join(c.name for c in d.failed))
    by_level = {}
    for level in levels:
        of = {base: [r for r in rows if r["level"] == level and r["base"] == base]
              for base in ("retrain", "champion_copy")}
        by_level[level_key(level)] = {"base": "retrain", **rejection_summary(level, of["retrain"]),
                                      "champion_copy": rejection_summary(level, of["champion_copy"])}
    return {"levels": by_level, "cases": rows, "gate_s": times}


def degrading_champion(s: Settings, inter: pd.DataFrame, wins: list, seeds: dict,
                       degrade_from: int = DEGRADE_FROM) -> dict[str, Any]:
    onset_start = wins[degrade_from][0]
    wrapped = DegradingModel(seeds["seed_mid"], active_from=onset_start - WEEK, noise=NOISE)
    old = register(s, seeds["seed_old"], seeds["old_window"], "seed_old")
    mid = register(s, wrapped, seeds["mid_window"], "seed_mid_degrading")
    promotion.promote(s, old, reason="benchmark seed: first champion", actor="bench")
    promotion.promote(s, mid, reason="benchmark seed: the champion that will degrade", actor="bench")
    rows, reverted_at, false_reverts = [], None, 0
    for i, (start, end) in enumerate(wins):
        history, window_df = split(inter, start, end)
        name = window_name(start, end)
        mon = monitor.check_window(s, history, window_df, name)
        rows.append({"window": name, "degraded": i >= degrade_from, **monitor_row(mon)})
        state = "REVERT" if mon.reverted else (f"{mon.consecutive} worse in a row" if mon.windows else mon.reason)
        log.info("degrade %s (%s): %s", name[:10], "noisy" if i >= degrade_from else "clean", state)
        if mon.reverted:
            if i < degrade_from:
                false_reverts += 1
            elif reverted_at is None:
                reverted_at = i
    champion_after = candidates.champion(s)
    delay = None if reverted_at is None else reverted_at - degrade_from + 1
    return {"windows": rows, "onset_window": window_name(*wins[degrade_from]), "noise": NOISE,
            "reverted_window": None if reverted_at is None else window_name(*wins[reverted_at]),
            "revert_delay_windows": delay, "false_reverts": false_reverts,
            "champion_after": champion_after.version if champion_after else None, "reverted_version": mid,
            "restored_version": old}


def main(n_windows: int = N_WINDOWS, bad_windows: tuple[int, ...] = BAD_WINDOWS, degrade_from: int = DEGRADE_FROM,
         epochs: int = EPOCHS, users_every: int = 1, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    inter, catalogue = frames()
    if users_every > 1:  # a slice of the users (the smoke run)
        inter = inter[inter["user_id"] % users_every == 0].reset_index(drop=True)
    wins = replay_windows(n=n_windows)
    print(f"replay: {len(wins)} windows {wins[0][0].date()} .. {wins[-1][1].date()}, "
          f"rows per window {[len(split(inter, *w)[1]) for w in wins]}, seeds {list(seeds)}")
    with tempfile.TemporaryDirectory(prefix="bench-decisions-") as tmp:
        root = Path(tmp)
        models = Models(inter, catalogue, root / "models", epochs)
        first_start = wins[0][0]
        old_w, mid_w = (first_start - 2 * WEEK, first_start - WEEK), (first_start - WEEK, first_start)

        def starting_pair(seed: int) -> dict[str, Any]:
            return {
                "seed_old": models.get("seed_old", split(inter, *old_w)[0], seed),
                "seed_mid": models.get("seed_mid", split(inter, *mid_w)[0], seed),
                "old_window": window_name(*old_w),
                "mid_window": window_name(*mid_w),
            }

        started = time.perf_counter()
        clean = [clean_replay(Settings(home=root / f"clean_seed{seed}"), models, inter, wins, starting_pair(seed), seed)
                 for seed in seeds]
        clean_s = time.perf_counter() - started
        started = time.perf_counter()
        bad = bad_challengers(root / "bad", models, inter, wins, bad_windows)
        bad_s = time.perf_counter() - started
        started = time.perf_counter()
        near = near_threshold(root / "near", models, inter, wins, seeds)
        near_s = time.perf_counter() - started
        started = time.perf_counter()
        degrade = degrading_champion(Settings(home=root / "degrade"), inter, wins, starting_pair(SEED), degrade_from)
        degrade_s = time.perf_counter() - started
        import mlflow

        mlflow.set_tracking_uri(None)
    gate_times = [t for c in clean for t in c.pop("gate_s")] + bad.pop("gate_s") + near.pop("gate_s")
    checks = [c for run in clean for c in run["false_promotion_checks"]]
    counted = count_false_promotions(checks)
    return {
        "bad_rejected": bad["bad_rejected"],
        "bad_total": bad["bad_total"],
        "revert_delay_windows": degrade["revert_delay_windows"],
        "false_reverts": sum(c["false_reverts"] for c in clean) + degrade["false_reverts"],
        "false_promotions": counted["false_promotions"],
        "false_promotions_judged": counted["judged"],
        "false_promotion_share": counted["share"],
        "promotions": counted["promotions"],
        "false_promotion_gaps": [c["gap"] for c in checks if c["gap"] is not None],
        "near_threshold": near["levels"],
        "gate_s": max(gate_times),
        "gate_s_median": float(np.median(gate_times)),
        "gate_steps": len(gate_times),
        "protocol": {
            "data": "MovieLens-100K, every rating an interaction",
            "windows": [window_name(*w) for w in wins],
            "train": f"TrainSettings(epochs={epochs}, seed=<seed>)",
            "seeds": list(seeds),
            "bad_and_degrading_seed": SEED,
            "bad_windows": [window_name(*wins[i]) for i in bad_windows],
            "oldest_weeks": OLDEST_WEEKS,
            "false_promotion": "promoted challenger's mean NDCG@10 on the next window < the replaced champion's there",
            "near_threshold_levels": [level_key(level) for level in LEVELS],
            "near_threshold": "against champion good[w-1], on window w for 1 <= w <= N-2: retrain good[w] (headline) "
                              "or the champion itself (champion_copy) plus per-user Gaussian score noise, calibrated "
                              "so that its NDCG@10 pooled over windows w+1..N-1 is the level below the champion's",
            "gate": Settings().gate.model_dump(exclude={"registry_retries", "registry_backoff_s", "lock_timeout_s",
                                                        "lock_lease_s"}),
            "monitor": Settings().monitor.model_dump(),
        },
        "false_promotion_checks": checks,
        "clean_replay": clean,
        "bad_challengers": bad,
        "near_threshold_cases": near["cases"],
        "degrading_champion": degrade,
        "train_s": {k: round(v, 2) for k, v in models.train_s.items()},
        "scenario_s": {"clean": clean_s, "bad": bad_s, "near_threshold": near_s, "degrade": degrade_s},
    }


def plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def goals_met(out: dict[str, Any]) -> dict[str, bool]:
    """Each goal of ``GOALS`` checked against the figures in ``out``."""
    delay = out["revert_delay_windows"]
    share = out["false_promotion_share"]
    near = out["near_threshold"]
    shares = [near[level_key(level)]["rejected_share"] for level in LEVELS if level_key(level) in near]
    met = {
        "bad_rejected": out["bad_rejected"] == out["bad_total"],
        "revert_delay_windows": delay is not None and delay <= 2,
        "false_reverts": out["false_reverts"] == 0,
        "false_promotions": share is not None and share <= FALSE_PROMOTION_SHARE,
        "near_threshold_monotone": len(shares) == len(LEVELS) and None not in shares
        and all(a <= b for a, b in pairwise(shares)),
    }
    for level, minimum in NEAR_REJECTED_MIN.items():
        value = near.get(level_key(level), {}).get("rejected_share")
        met[f"near_threshold_{level_key(level)}"] = value is not None and value >= minimum
    met["gate_s"] = out["gate_s"] <= 5.0
    return met


def summary_line(level: dict[str, Any]) -> str:
    """One printed line of a near-threshold level's figures."""
    if not level["cases"]:
        return f"no case gated ({level['not_calibrated']} not calibrated)"
    low, high = level["rejected_share_ci95"]
    return (f"rejected {level['rejected']}/{level['cases']} = {level['rejected_share']:.3f} "
            f"(95% CI {low:.2f}-{high:.2f}); "
            f"degradation on the gate's window {level['achieved_degradation_mean']:+.3f} "
            f"(sd {level['achieved_degradation_sd'] or 0:.3f}, {level['achieved_better_on_window']} looked better), "
            f"on the pool {level['calibration_degradation_mean']:+.3f}; {level['not_calibrated']} not calibrated")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every scenario on a slice of the data, three windows, "
                        "one epoch, one seed; never writes bench/results")
    parser.add_argument("--out", type=Path, default=None, help="folder for decisions.json (default bench/results; "
                        "with --smoke a temporary folder)")
    args = parser.parse_args()
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-decisions-out-")) if args.smoke else RESULTS.parent)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    for name in ("recsys_retrain", "mlflow", "alembic", "torchrec", "torch", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    out = main(**SMOKE) if args.smoke else main()
    out["bench_s"] = time.perf_counter() - started
    met = goals_met(out)
    out["goals"] = {k: {"goal": GOALS[k], "met": v} for k, v in met.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS.name).write_text(json.dumps(plain(out), indent=2, allow_nan=False))
    print()
    for key in ("bad_rejected", "bad_total", "revert_delay_windows", "false_reverts", "false_promotions",
                "false_promotions_judged", "promotions", "gate_s", "gate_s_median", "bench_s"):
        value = out[key]
        goal = f"  goal {GOALS[key]}: {'met' if met[key] else 'NOT MET'}" if key in met else ""
        print(f"{key:>24}: {value:.3f}{goal}" if isinstance(value, float) else f"{key:>24}: {value}{goal}")
    print(f"{'false_promotion_gaps':>24}: {[round(g, 4) for g in out['false_promotion_gaps']]}")
    for key, level in out["near_threshold"].items():
        for label, summary in ((f"near {key} retrain", level), (f"near {key} champion_copy", level["champion_copy"])):
            print(f"{label:>24}: {summary_line(summary)}")
    for key in met:
        if key.startswith("near_threshold"):
            print(f"{key:>24}: goal {GOALS[key]}: {'met' if met[key] else 'NOT MET'}")
