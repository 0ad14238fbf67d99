"""Decision-quality benchmark: the promotion gate and the auto-revert monitor on a MovieLens-100K replay.

Protocol. The last ``N_WINDOWS`` full weeks of MovieLens-100K are replayed, one
window ``[start, start + 7 d)`` at a time; a window's history is every
interaction before its start. Every model is the real two-tower model
(``recsys_retrain.train.loop.train`` with ``TrainSettings(epochs=4)``), every version lives
in a real MLflow registry on SQLite in a temporary folder (models are logged
with ``registry.candidates.log_candidate`` and loaded back from the registry), every
promotion decision is ``recsys_retrain.gate.decide`` on ``recsys_retrain.evaluate.user_metrics``
of challenger and champion on the same window, applied with
``registry.promotion.apply_decision``, and every revert decision is ``recsys_retrain.monitor.check_window``.
Models are trained once and reused across the scenarios:

``good[w]``  trained on the history of window ``w`` (what the pipeline would train).
``seed_old`` / ``seed_mid``  trained on the history of two and one weeks before the
    first window: the sound champion/previous pair the replays start from.

Scenarios, each in its own registry:

1. clean replay: starts with ``seed_old`` -> ``seed_mid`` promoted by hand; on every
   window the monitor checks champion vs previous, then ``good[w]`` is gated
   against the champion. Counts false reverts (any revert here) and false
   promotions (a promoted challenger whose mean NDCG@10 on its window is below the
   champion's).
2. bad challengers, injected at ``BAD_WINDOWS`` against the champion ``good[w-1]``:
   ``shuffled`` (trained on the window's history with item ids permuted by a random
   bijection), ``corrupted`` (``good[w]`` with the item tower's ``t_item_id`` table
   replaced by random values at the trained table's scale), ``oldest`` (trained only
   on the first ``OLDEST_WEEKS`` weeks of the data). Each must be rejected.
3. degrading champion: ``seed_old`` is previous, ``seed_mid`` wrapped in
   :class:`DegradingModel` is champion; from window ``DEGRADE_FROM`` on its scores
   get strong Gaussian noise. The monitor runs on every window; the revert must
   come within 2 windows of the onset (delay 1 = reverted on the onset window);
   a revert before the onset is a false revert.

``gate_s`` is the longest wall time of one whole gate step (load the registered
challenger and the champion from MLflow, score both on the window, bootstrap
decision, apply it to the registry). Writes bench/results/decisions.json.

``--smoke``: every scenario on ``SMOKE`` (a quarter of the users, two windows, one bad
window, one epoch per model), written to ``--out`` or a temporary folder, never bench/results.
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys_retrain import monitor
from recsys_retrain.evaluate import UserEval, user_metrics
from recsys_retrain.gate import GateDecision, decide
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
SEED = 0
SMOKE = {"n_windows": 2, "bad_windows": (1,), "degrade_from": 1, "epochs": 1, "users_every": 4}
GOALS = {
    "bad_rejected": "== bad_total",
    "revert_delay_windows": "<= 2",
    "false_reverts": "== 0",
    "false_promotions": "== 0",
    "gate_s": "<= 5",
}

log = logging.getLogger("bench.decisions")


# --------------------------------------------------------------------------- helpers (pure, tested)


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


# --------------------------------------------------------------------------- models and gate


class Models:
    """Trains each model once (into a temp folder) and keeps it in memory."""

    def __init__(self, inter: pd.DataFrame, catalogue: pd.DataFrame, root: Path, epochs: int = EPOCHS) -> None:
        self.inter, self.catalogue, self.root, self.epochs = inter, catalogue, root, epochs
        self.cache: dict[str, nn.Module] = {}
        self.train_s: dict[str, float] = {}

    def get(self, key: str, history: pd.DataFrame) -> nn.Module:
        if key not in self.cache:
            started = time.perf_counter()
            result = train(history, self.catalogue, self.root / key, TrainSettings(epochs=self.epochs, seed=SEED),
                           progress=False)
            self.cache[key] = load_checkpoint(Path(result.checkpoint))
            self.train_s[key] = time.perf_counter() - started
            log.info("trained %s on %d rows in %.1fs", key, len(history), self.train_s[key])
        return self.cache[key]


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


def clean_replay(s: Settings, models: Models, inter: pd.DataFrame, wins: list, seeds: dict) -> dict[str, Any]:
    old = register(s, seeds["seed_old"], seeds["old_window"], "seed_old")
    mid = register(s, seeds["seed_mid"], seeds["mid_window"], "seed_mid")
    promotion.promote(s, old, reason="benchmark seed: first champion", actor="bench")
    promotion.promote(s, mid, reason="benchmark seed: sound successor", actor="bench")
    rows, false_reverts, false_promotions, times = [], 0, 0, []
    for i, (start, end) in enumerate(wins):
        history, window_df = split(inter, start, end)
        name = window_name(start, end)
        mon = monitor.check_window(s, history, window_df, name)
        false_reverts += int(mon.reverted)
        version = register(s, models.get(f"good{i}", history), name, "good")
        d, promoted, secs, extra = gate_step(s, version, history, window_df, name)
        times.append(secs)
        false = promoted and d.champion_value is not None and d.challenger_value < d.champion_value
        false_promotions += int(false)
        rows.append({"window": name, "rows": len(window_df), "monitor": monitor_row(mon),
                     "gate": decision_row(d, promoted, secs, extra), "false_promotion": false})
        champ = "none" if d.champion_value is None else f"{d.champion_value:.4f}"
        log.info("clean %s: monitor %s | gate v%s %.4f vs champion %s -> %s", name[:10],
                 "REVERT" if mon.reverted else "ok", version, d.challenger_value, champ,
                 "promote" if promoted else "keep")
    return {"windows": rows, "false_reverts": false_reverts, "false_promotions": false_promotions,
            "promotions": sum(r["gate"]["promoted"] for r in rows), "promotion_followups": followups(rows),
            "gate_s": times}


def followups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each promotion, the monitor's champion - previous NDCG@10 on the windows after it.

    ``false_promotions`` judges a promotion on its own window; this shows whether
    the promoted version stayed at least as good as the one it replaced later on.
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
        champion_model = models.get(f"good{i - 1}", prev_history)
        good_model = models.get(f"good{i}", history)
        bad = {
            "shuffled": models.get(f"shuffled{i}", permute_items(history, catalogue_ids, SEED + i)),
            "corrupted": corrupt_item_table(good_model, SEED + i),
            "oldest": models.get("oldest", oldest_history),
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
         epochs: int = EPOCHS, users_every: int = 1) -> dict[str, Any]:
    inter, catalogue = frames()
    if users_every > 1:  # a slice of the users (the smoke run)
        inter = inter[inter["user_id"] % users_every == 0].reset_index(drop=True)
    wins = replay_windows(n=n_windows)
    print(f"replay: {len(wins)} windows {wins[0][0].date()} .. {wins[-1][1].date()}, "
          f"rows per window {[len(split(inter, *w)[1]) for w in wins]}")
    with tempfile.TemporaryDirectory(prefix="bench-decisions-") as tmp:
        root = Path(tmp)
        models = Models(inter, catalogue, root / "models", epochs)
        first_start = wins[0][0]
        old_w, mid_w = (first_start - 2 * WEEK, first_start - WEEK), (first_start - WEEK, first_start)
        seeds = {
            "seed_old": models.get("seed_old", split(inter, *old_w)[0]),
            "seed_mid": models.get("seed_mid", split(inter, *mid_w)[0]),
            "old_window": window_name(*old_w),
            "mid_window": window_name(*mid_w),
        }
        started = time.perf_counter()
        clean = clean_replay(Settings(home=root / "clean"), models, inter, wins, seeds)
        clean_s = time.perf_counter() - started
        started = time.perf_counter()
        bad = bad_challengers(root / "bad", models, inter, wins, bad_windows)
        bad_s = time.perf_counter() - started
        started = time.perf_counter()
        degrade = degrading_champion(Settings(home=root / "degrade"), inter, wins, seeds, degrade_from)
        degrade_s = time.perf_counter() - started
        import mlflow

        mlflow.set_tracking_uri(None)
    gate_times = clean.pop("gate_s") + bad.pop("gate_s")
    return {
        "bad_rejected": bad["bad_rejected"],
        "bad_total": bad["bad_total"],
        "revert_delay_windows": degrade["revert_delay_windows"],
        "false_reverts": clean["false_reverts"] + degrade["false_reverts"],
        "false_promotions": clean["false_promotions"],
        "gate_s": max(gate_times),
        "gate_s_median": float(np.median(gate_times)),
        "gate_steps": len(gate_times),
        "protocol": {
            "data": "MovieLens-100K, every rating an interaction",
            "windows": [window_name(*w) for w in wins],
            "train": f"TrainSettings(epochs={epochs}, seed={SEED})",
            "bad_windows": [window_name(*wins[i]) for i in bad_windows],
            "oldest_weeks": OLDEST_WEEKS,
            "gate": Settings().gate.model_dump(exclude={"registry_retries", "registry_backoff_s", "lock_timeout_s",
                                                        "lock_lease_s"}),
            "monitor": Settings().monitor.model_dump(),
        },
        "clean_replay": clean,
        "bad_challengers": bad,
        "degrading_champion": degrade,
        "train_s": {k: round(v, 2) for k, v in models.train_s.items()},
        "scenario_s": {"clean": clean_s, "bad": bad_s, "degrade": degrade_s},
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
    delay = out["revert_delay_windows"]
    return {
        "bad_rejected": out["bad_rejected"] == out["bad_total"],
        "revert_delay_windows": delay is not None and delay <= 2,
        "false_reverts": out["false_reverts"] == 0,
        "false_promotions": out["false_promotions"] == 0,
        "gate_s": out["gate_s"] <= 5.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every scenario on a slice of the data, two windows, one epoch; "
                        "never writes bench/results")
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
    for key in ("bad_rejected", "bad_total", "revert_delay_windows", "false_reverts", "false_promotions", "gate_s",
                "gate_s_median", "bench_s"):
        value = out[key]
        goal = f"  goal {GOALS[key]}: {'met' if met[key] else 'NOT MET'}" if key in met else ""
        print(f"{key:>22}: {value:.3f}{goal}" if isinstance(value, float) else f"{key:>22}: {value}{goal}")
