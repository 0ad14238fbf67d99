"""Retraining-policy backtest: the same timeline under every policy, served quality against training compute.

Policies (``POLICIES``):

* ``never``: the first model serves the whole timeline;
* ``weekly``: a retrain on every window (static schedule: the train section as is);
* ``drift``: a retrain when the window's drift severity reaches ``retrain_on`` (static schedule);
* ``drift_adaptive``: the same trigger, trained under the adaptive scheduler
  (``recsys_retrain.cycle.calibrate`` -> plan -> ``recsys_retrain.cycle.train``);
* ``drift_warm``: the same trigger and scheduler with warm starts on
  (``schedule.warm_start``): ``calibrate`` decides, from the drift verdict and how much
  of the data the champion has not seen, whether the challenger continues from the
  champion's weights or trains from scratch;
* the reference policies ``recent_pop`` (the items most interacted with in the last
  ``RECENT_DAYS`` days) and ``ease`` (EASE, Steck 2019), each refit on every window's
  history: what a user compares the pipeline with first.

Protocol, as the pipeline runs a cycle: window ``w`` is ``[start, start + 7 d)``; the
serving model is scored on it (full-ranking NDCG@10 of every user of the window with
something new to find, the value a policy is judged by); then, if the policy retrains
on ``w``, a challenger is trained on everything before ``start`` and gated against the
champion on ``w`` (``recsys_retrain.gate.decide``, the production gate, under
``gate.policy``). A promoted challenger is refit through ``w``'s end
(``recsys_retrain.train.refit``, ``train.refit``) and, if the refit passes its sanity
check, the refit serves from ``w + 1``: so a promoted model has seen every day before
the first window it serves (staleness 0). Window 0 trains and refits the first model,
the same for every pipeline policy and not counted as retraining compute; no policy
retrains on the last window (that model would serve no scored window).

Data steps (pull, validate, drift) run once per window in a shared folder; each
policy trains in its own home (so the adaptive policy's knowledge base is its own).
A challenger for a window is trained once per schedule kind and reused by every
policy that needs it (each is charged the seconds it took), and so is its refit; a
warm challenger depends on the champion it continues from, which is part of its key.
Registry and MLflow runs are not used: the backtest compares policies, it does not
deploy.

``gate_policies`` replays the retraining policies once more under each other gate
policy on the same models (the gate costs no training): how the default
``gate.policy`` is chosen.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_retrain.backtest_report import REFERENCE_POLICIES, BacktestResult, PolicyResult, paired_ci, write
from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings

__all__ = ["POLICIES", "BacktestResult", "PolicyResult", "backtest", "paired_ci", "retrains", "triggers"]

PIPELINE_POLICIES = ("never", "weekly", "drift", "drift_adaptive", "drift_warm")
POLICIES = PIPELINE_POLICIES + REFERENCE_POLICIES
SEVERITY_ORDER = ("none", "minor", "major")
WEEK = timedelta(days=7)
RECENT_DAYS = 28  # recent popularity's window: chosen on validation by bench/quality.py
EASE_LAMBDA = 500.0
KIND = {"weekly": "static", "drift": "static", "drift_adaptive": "adaptive", "drift_warm": "warm"}
Key = tuple  # a trained model's identity: (kind, window start[, champion key])


def triggers(severity: str, retrain_on: str) -> bool:
    """Whether a drift verdict of ``severity`` reaches the ``retrain_on`` level.

    Example:
        >>> triggers("minor", "minor"), triggers("minor", "major"), triggers("none", "minor")
        (True, False, False)
    """
    return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(retrain_on)


def retrains(policy: str, severity: str, retrain_on: str) -> bool:
    """Whether ``policy`` retrains on a window whose drift verdict is ``severity``."""
    if policy == "never" or policy in REFERENCE_POLICIES:
        return False
    if policy == "weekly":
        return True
    return triggers(severity, retrain_on)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def policy_pulled(pulled: dict[str, Any], home: Path) -> dict[str, Any]:
    """The window's pulled files seen from a policy's own cycle folder (hard links), so its model and plan stay apart."""
    src = Path(pulled["run_dir"])
    dst = home / "runs" / src.name
    for name in ("history.parquet", "holdout.parquet", "reference.parquet", "catalogue.parquet", "profile.json"):
        if (src / name).exists():
            _link(src / name, dst / name)
    return {**pulled, "run_dir": str(dst)}


@dataclass(frozen=True)
class Served:
    """A model in service: its key in ``Trainer.models`` and the end of the data it has seen."""

    key: Key
    data_end: pd.Timestamp


class Trainer:
    """Trains (once per window, schedule kind and champion) and refits models; remembers what each cost."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root, self.settings = root, settings
        self.cost: dict[Key, tuple[int, float]] = {}
        self.models: dict[Key, Any] = {}
        self.checkpoints: dict[Key, Path] = {}
        self.refits: dict[Key, tuple[Served, bool]] = {}
        self.warm: set[Key] = set()  # challengers that continued from their champion
        self.plans: dict[Key, dict[str, Any] | None] = {}  # each challenger's plan: its refit follows it, as in the cycle

    def _home(self, kind: str) -> Settings:
        return self.settings.model_copy(update={"home": self.root / kind})

    def train(self, kind: str, pulled: dict[str, Any], drift_result: dict[str, Any], champion: Served | None = None) -> Key:
        """A challenger of ``kind`` ("static", "adaptive" or "warm") on the history before the window; returns its key.

        A warm challenger continues from ``champion`` when ``calibrate`` says so (and
        otherwise trains from scratch, as the adaptive kind does): its key holds the
        champion's.
        """
        from recsys_retrain import cycle

        key = (kind, pulled["start"], champion.key) if kind == "warm" else (kind, pulled["start"])
        if key in self.models:
            return key
        s = self._home(f"{kind}-{len(self.models)}" if kind == "warm" else kind)
        mine = policy_pulled(pulled, s.home)
        adaptive = kind in ("adaptive", "warm")
        overrides: dict[str, dict[str, Any]] = {"schedule": {"policy": "adaptive" if adaptive else "static"}}
        if kind == "warm":
            overrides["schedule"]["warm_start"] = True
        champ = self.champion_for(champion) if kind == "warm" and champion is not None else None
        started = time.perf_counter()
        plan = cycle.calibrate(mine, drift_result, settings=s, overrides=overrides, champion=champ) if adaptive else None
        trained = cycle.train(mine, settings=s, overrides=overrides, plan=plan, champion=champ)
        self.cost[key] = (len(trained["epoch_losses"]), time.perf_counter() - started)
        self.plans[key] = plan
        if trained.get("warm_from"):
            self.warm.add(key)
        self._load(key, Path(trained["checkpoint"]))
        return key

    def champion_for(self, served: Served):
        """What ``cycle.calibrate`` / ``cycle.train`` need of a champion outside the registry."""
        from recsys_retrain.champion import KnownChampion

        return KnownChampion(self.models[served.key], served.data_end, "/".join(str(k)[:10] for k in served.key[:3]))

    def _load(self, key: Key, checkpoint: Path) -> None:
        from recsys_retrain.train.checkpoints import load_checkpoint

        self.models[key], self.checkpoints[key] = load_checkpoint(checkpoint), checkpoint

    def refit(self, key: Key, pulled: dict[str, Any], frames: Frames) -> tuple[Served, bool]:
        """The gated model ``key`` refit through the window's end (``train.refit``, its plan's rates); ``(served, refit_ok)``.

        ``refit = "off"`` or a refit that fails its sanity check serves the gated model
        itself (data up to the window's start).
        """
        from recsys_retrain.train.refit import refit_model, sanity_check

        if key in self.refits:
            return self.refits[key]
        start, end = pd.Timestamp(pulled["start"]), pd.Timestamp(pulled["end"])
        mode = self.settings.train.refit
        if mode == "off":
            self.refits[key] = (Served(key, start), True)
            return self.refits[key]
        history, window, catalogue = frames
        out = self.root / "refits" / "-".join(str(k)[:19].replace(":", "") for k in key[:2]) / f"n{len(self.refits)}"
        result = refit_model(history, window, catalogue, self.checkpoints[key], out, self.settings, mode,
                             plan=self.plans.get(key))
        rkey = ("refit", *key)
        self._load(rkey, Path(result.checkpoint))
        self.cost[rkey] = (result.epochs, result.seconds)
        check = sanity_check(self.models[rkey], self.models[key], history, window, self.settings)
        self.refits[key] = (Served(rkey, end), True) if check.ok else (Served(key, start), False)
        return self.refits[key]


Frames = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]  # a window's history, holdout and catalogue


def read_frames(pulled: dict[str, Any]) -> Frames:
    """The window's pulled files, read once for every model scored or refit on it."""
    run = Path(pulled["run_dir"])
    return tuple(pd.read_parquet(run / f"{name}.parquet") for name in ("history", "holdout", "catalogue"))


def _score(model, frames: Frames, settings: Settings):
    from recsys_retrain.evaluate import user_metrics

    history, holdout, _ = frames
    return user_metrics(model, history, holdout, settings.eval.k, settings.gate.head_share)


def reference_model(policy: str, frames: Frames):
    """``recent_pop`` or ``ease`` fit on everything before the window: refit every week, never stale."""
    from recsys_retrain.baselines import EASE, RecentPopular

    history, _, catalogue = frames
    if policy == "recent_pop":
        return RecentPopular(history, catalogue, RECENT_DAYS)
    return EASE(history, catalogue, EASE_LAMBDA)


@dataclass
class Track:
    """One policy's state through the replay."""

    policy: str
    gate_policy: str
    champion: Served | None = None
    served: list[float] = field(default_factory=list)
    retrained: list[bool] = field(default_factory=list)
    spent: list[Key] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)
    promoted_staleness: list[float] = field(default_factory=list)
    promotions: int = 0
    refits_rejected: int = 0

    def result(self, trainer: Trainer) -> PolicyResult:
        costs = [trainer.cost[k] for k in self.spent]
        return PolicyResult(
            self.policy, float(np.mean(self.served)), int(sum(e for e, _ in costs)), float(sum(s for _, s in costs)),
            sum(1 for k in self.spent if k[0] != "refit"), self.promotions, tuple(self.served), tuple(self.retrained),
            tuple(self.staleness), tuple(self.promoted_staleness), self.refits_rejected, self.gate_policy,
            sum(1 for k in self.spent if k in trainer.warm),
        )


def _days(a: pd.Timestamp, b: pd.Timestamp) -> float:
    return round((pd.Timestamp(a) - pd.Timestamp(b)) / pd.Timedelta(days=1), 3)


def backtest(
    settings: Settings,
    starts: list[pd.Timestamp],
    root: Path,
    retrain_on: str = "minor",
    policies: tuple[str, ...] = POLICIES,
    gate_policies: tuple[str, ...] = (),
    progress: bool = True,
) -> BacktestResult:
    """Replays the windows starting at ``starts`` under each policy (see the module docstring).

    Args:
        settings: pipeline settings; ``feature_repo`` must hold the whole timeline
            (pulls are point-in-time, so a window never sees later data).
        starts: window starts, consecutive weeks; the first trains the initial model.
        root: working folder (cycle folders of every policy); ``backtest.json`` and
            ``backtest.png`` are written there.
        retrain_on: drift severity that triggers the drift policies.
        policies: which of ``POLICIES`` to replay.
        gate_policies: other ``gate.policy`` values to replay the static and adaptive
            retraining policies under, on the same models (``by_gate_policy``).

    Returns:
        BacktestResult with each policy's served NDCG@10 per window, promotions,
        staleness and training compute.
    """
    from tqdm import tqdm

    from recsys_retrain import cycle, gate

    if len(starts) < 2:
        raise PipelineError(f"backtest needs at least 2 windows (one to train, one to score), got {len(starts)}")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or retrain_on not in SEVERITY_ORDER[1:]:
        raise PipelineError(f"backtest: unknown policy {unknown} or retrain_on {retrain_on!r} (policies: {', '.join(POLICIES)})")
    known_gates = type(settings.gate).model_fields["policy"].annotation.__args__
    if set(gate_policies) - set(known_gates):
        raise PipelineError(f"backtest: unknown gate policy in {list(gate_policies)} (one of: {', '.join(known_gates)})")
    started = time.perf_counter()
    data = settings.model_copy(update={"home": root / "data"})
    trainer = Trainer(root, settings)
    default_gate = settings.gate.policy
    tracks = [Track(p, default_gate) for p in policies]
    tracks += [Track(p, g) for g in gate_policies if g != default_gate for p in policies if p in ("weekly", "drift", "drift_adaptive")]
    windows, severities = [], []
    ndcg = f"ndcg_at_{settings.eval.k}"
    for i, begin in enumerate(tqdm(starts, desc="backtest", unit="window", disable=not progress)):
        end = begin + WEEK
        pulled = cycle.validate(cycle.pull(begin.isoformat(), end.isoformat(), settings=data), settings=data)
        drift_result = cycle.drift(pulled, settings=data)
        windows.append(f"{begin.isoformat()}/{end.isoformat()}")
        severities.append(drift_result["severity"])
        frames = read_frames(pulled)
        if i == 0:
            first, _ = trainer.refit(trainer.train("static", pulled, drift_result), pulled, frames)
            for t in tracks:
                t.champion = first if t.policy not in REFERENCE_POLICIES else None
            continue
        scores = {t.champion.key: None for t in tracks if t.champion is not None}
        scores = {key: _score(trainer.models[key], frames, settings) for key in scores}
        for t in tracks:
            if t.champion is None:  # a reference policy: refit on this window's history, never stale
                t.served.append(_score(reference_model(t.policy, frames), frames, settings).metrics[ndcg])
                t.staleness.append(0.0)
                t.retrained.append(False)
                continue
            t.served.append(scores[t.champion.key].metrics[ndcg])
            t.staleness.append(_days(begin, t.champion.data_end))
            go = i < len(starts) - 1 and retrains(t.policy, drift_result["severity"], retrain_on)
            t.retrained.append(go)
            if not go:
                continue
            key = trainer.train(KIND[t.policy], pulled, drift_result, t.champion)
            t.spent.append(key)
            if key == t.champion.key:
                continue
            if key not in scores:
                scores[key] = _score(trainer.models[key], frames, settings)
            gate_settings = settings.gate.model_copy(update={"policy": t.gate_policy})
            decision = gate.decide(scores[key], scores[t.champion.key], gate_settings, window=windows[-1])
            if not decision.promote:
                continue
            fresh, ok = trainer.refit(key, pulled, frames)
            if fresh.key != key:
                t.spent.append(fresh.key)
            t.refits_rejected += int(not ok)
            t.champion = fresh
            t.promotions += 1
            t.promoted_staleness.append(_days(end, fresh.data_end))
    main = tuple(t.result(trainer) for t in tracks if t.gate_policy == default_gate)
    others: dict[str, tuple[PolicyResult, ...]] = {}
    for t in tracks:
        if t.gate_policy != default_gate:
            others[t.gate_policy] = (*others.get(t.gate_policy, ()), t.result(trainer))
    result = BacktestResult(tuple(windows), tuple(severities), retrain_on, main, round(time.perf_counter() - started, 1),
                            default_gate, settings.train.refit, others)
    return write(result, root)


# --------------------------------------------------------------------------- datasets

DATASETS = {
    # MovieLens-100K: 21 windows from 1997-10-06 (two weeks of history before it), 20 scored, to 1998-03-02
    "movielens": {"start": "1997-10-06", "weeks": 21},
    # recsys_retrain.simulate.drifting_timeline from 2000-01-03: four weeks of history, then 21 windows;
    # the regime change lands on window 8 and the new items on window 14
    "synthetic": {"start": "2000-01-31", "weeks": 21},
}


def timeline(dataset: str, raw) -> tuple[Any, dict]:
    """The interactions a dataset's backtest replays, and its ground truth (drift events; empty for real data)."""
    from recsys_retrain.simulate import drifting_timeline

    if dataset == "movielens":
        return raw, {}
    if dataset == "synthetic":
        return drifting_timeline(raw, start="2000-01-03", weeks=25, regime_week=12, influx_week=18)
    raise PipelineError(f"backtest: unknown dataset {dataset!r} (one of: {', '.join(DATASETS)})")


def feature_store(raw, root: Path, settings: Settings) -> Settings:
    """A feature repository under ``root`` holding the whole timeline; the settings that point at it."""
    from recsys_retrain.data.ingest import bootstrap_feature_repo
    from recsys_retrain.paths import mark_owned
    from recsys_retrain.resources import copy_definitions

    repo = copy_definitions(settings.feature_repo, mark_owned(root) / "features")
    bootstrap_feature_repo(raw, repo)
    return settings.model_copy(update={"feature_repo": repo})


def window_starts(start: str | pd.Timestamp, weeks: int) -> list[pd.Timestamp]:
    """``weeks`` consecutive Monday-aligned (as given) window starts.

    Example:
        >>> [t.date().isoformat() for t in window_starts("1997-10-06", 3)]
        ['1997-10-06', '1997-10-13', '1997-10-20']
    """
    first = pd.Timestamp(start)
    first = first.tz_localize("UTC") if first.tzinfo is None else first
    return [first + WEEK * i for i in range(weeks)]
