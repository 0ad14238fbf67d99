"""Retraining-policy backtest: the same timeline under four policies, quality against training compute.

Policies (``POLICIES``):

* ``never``: the first model serves the whole timeline;
* ``weekly``: a retrain on every window (static schedule: the train section as is);
* ``drift``: a retrain when the window's drift severity reaches ``retrain_on`` (static schedule);
* ``drift_adaptive``: the same trigger, trained under the adaptive scheduler
  (``recsys_retrain.cycle.calibrate`` -> plan -> ``recsys_retrain.cycle.train``).

Protocol, as the pipeline runs a cycle: window ``w`` is ``[start, start + 7 d)``; the
serving champion is scored on it (full-ranking NDCG@10, the value a policy is judged
by); then, if the policy retrains on ``w``, a challenger is trained on everything
before ``start`` and gated against the champion on ``w`` (``recsys_retrain.gate.decide``, the
production gate); a promoted challenger serves from ``w + 1``. Window 0 trains the
first model, the same for every policy and not counted as retraining compute; no
policy retrains on the last window (that model would serve no scored window).

Data steps (pull, validate, drift) run once per window in a shared folder; each
policy trains in its own home (so the adaptive policy's knowledge base is its own),
and a static model for a window is trained once and reused by both static policies
(each is charged the seconds it took). Registry and MLflow runs are not used: the
backtest compares policies, it does not deploy.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import write_json, write_with
from recsys_retrain.settings import Settings

POLICIES = ("never", "weekly", "drift", "drift_adaptive")
SEVERITY_ORDER = ("none", "minor", "major")
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class PolicyResult:
    """One policy over the timeline: served NDCG@10 per window and the retraining compute it spent."""

    policy: str
    mean_ndcg10: float
    train_epochs: int
    train_s: float
    trains: int
    promotions: int
    ndcg10: tuple[float, ...]  # per scored window (1..N-1)
    retrained: tuple[bool, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyResult:
        return cls(**{**d, "ndcg10": tuple(d["ndcg10"]), "retrained": tuple(d["retrained"])})


@dataclass(frozen=True)
class BacktestResult:
    """Every policy's result on the same windows, the drift verdicts that triggered retrains, and where the files are."""

    windows: tuple[str, ...]
    severities: tuple[str, ...]
    retrain_on: str
    policies: tuple[PolicyResult, ...]
    seconds: float
    json_path: str = ""
    plot_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policies": [p.to_dict() for p in self.policies]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BacktestResult:
        return cls(**{**d, "windows": tuple(d["windows"]), "severities": tuple(d["severities"]),
                      "policies": tuple(PolicyResult.from_dict(p) for p in d["policies"])})

    def summary(self) -> dict[str, dict[str, float]]:
        """``policy -> {mean_ndcg10, train_epochs, train_s}`` (the benchmark's ``backtest`` key)."""
        return {p.policy: {"mean_ndcg10": round(p.mean_ndcg10, 5), "train_epochs": p.train_epochs,
                           "train_s": round(p.train_s, 1)} for p in self.policies}


def triggers(severity: str, retrain_on: str) -> bool:
    """Whether a drift verdict of ``severity`` reaches the ``retrain_on`` level.

    Example:
        >>> triggers("minor", "minor"), triggers("minor", "major"), triggers("none", "minor")
        (True, False, False)
    """
    return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(retrain_on)


def retrains(policy: str, severity: str, retrain_on: str) -> bool:
    """Whether ``policy`` retrains on a window whose drift verdict is ``severity``."""
    if policy == "never":
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


class Trainer:
    """Trains (once per window and schedule kind) and scores models; remembers what each training cost."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root, self.settings = root, settings
        self.cost: dict[tuple[str, str], tuple[int, float]] = {}
        self.models: dict[tuple[str, str], Any] = {}

    def train(self, kind: str, pulled: dict[str, Any], drift_result: dict[str, Any]) -> tuple[str, str]:
        """A model of schedule ``kind`` ("static" or "adaptive") on the history before the window; returns its key."""
        from recsys_retrain import cycle
        from recsys_retrain.train.checkpoints import load_checkpoint

        key = (kind, pulled["start"])
        if key in self.models:
            return key
        s = self.settings.model_copy(update={"home": self.root / kind})
        mine = policy_pulled(pulled, s.home)
        overrides = {"schedule": {"policy": "adaptive" if kind == "adaptive" else "static"}}
        plan = cycle.calibrate(mine, drift_result, settings=s, overrides=overrides) if kind == "adaptive" else None
        started = time.perf_counter()
        trained = cycle.train(mine, settings=s, overrides=overrides, plan=plan)
        self.cost[key] = (len(trained["epoch_losses"]), time.perf_counter() - started)
        self.models[key] = load_checkpoint(Path(trained["checkpoint"]))
        return key


def _score(model, pulled: dict[str, Any], settings: Settings):
    from recsys_retrain.evaluate import user_metrics

    run = Path(pulled["run_dir"])
    history, holdout = pd.read_parquet(run / "history.parquet"), pd.read_parquet(run / "holdout.parquet")
    return user_metrics(model, history, holdout, settings.eval.k, settings.gate.head_share)


def backtest(
    settings: Settings,
    starts: list[pd.Timestamp],
    root: Path,
    retrain_on: str = "minor",
    policies: tuple[str, ...] = POLICIES,
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

    Returns:
        BacktestResult with each policy's mean served NDCG@10 and training compute.
    """
    from tqdm import tqdm

    from recsys_retrain import cycle, gate

    if len(starts) < 2:
        raise PipelineError(f"backtest needs at least 2 windows (one to train, one to score), got {len(starts)}")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or retrain_on not in SEVERITY_ORDER[1:]:
        raise PipelineError(f"backtest: unknown policy {unknown} or retrain_on {retrain_on!r} (policies: {', '.join(POLICIES)})")
    started = time.perf_counter()
    data = settings.model_copy(update={"home": root / "data"})
    trainer = Trainer(root, settings)
    champion: dict[str, tuple[str, str]] = {}
    served: dict[str, list[float]] = {p: [] for p in policies}
    retrained: dict[str, list[bool]] = {p: [] for p in policies}
    spent: dict[str, list[tuple[int, float]]] = {p: [] for p in policies}
    promotions = {p: 0 for p in policies}
    windows, severities = [], []
    ndcg = f"ndcg_at_{settings.eval.k}"
    for i, begin in enumerate(tqdm(starts, desc="backtest", unit="window", disable=not progress)):
        end = begin + WEEK
        pulled = cycle.validate(cycle.pull(begin.isoformat(), end.isoformat(), settings=data), settings=data)
        drift_result = cycle.drift(pulled, settings=data)
        windows.append(f"{begin.isoformat()}/{end.isoformat()}")
        severities.append(drift_result["severity"])
        if i == 0:
            first = trainer.train("static", pulled, drift_result)
            champion = {p: first for p in policies}
            continue
        scores = {key: _score(trainer.models[key], pulled, settings) for key in set(champion.values())}
        for policy in policies:
            served[policy].append(scores[champion[policy]].metrics[ndcg])
            go = i < len(starts) - 1 and retrains(policy, drift_result["severity"], retrain_on)  # the last model would serve nothing
            retrained[policy].append(go)
            if not go:
                continue
            key = trainer.train("adaptive" if policy == "drift_adaptive" else "static", pulled, drift_result)
            spent[policy].append(trainer.cost[key])
            if key == champion[policy]:
                continue
            decision = gate.decide(_score(trainer.models[key], pulled, settings), scores[champion[policy]], settings.gate,
                                   window=windows[-1])
            if decision.promote:
                champion[policy] = key
                promotions[policy] += 1
    results = tuple(
        PolicyResult(p, float(np.mean(served[p])), int(sum(e for e, _ in spent[p])), float(sum(s for _, s in spent[p])),
                     len(spent[p]), promotions[p], tuple(served[p]), tuple(retrained[p]))
        for p in policies
    )
    result = BacktestResult(tuple(windows), tuple(severities), retrain_on, results, round(time.perf_counter() - started, 1))
    return write(result, root)


def write(result: BacktestResult, root: Path) -> BacktestResult:
    """Writes ``backtest.json`` and ``backtest.png`` under ``root``; returns the result with their paths."""
    root.mkdir(parents=True, exist_ok=True)
    plot = plot_policies(result, root / "backtest.png")
    out = BacktestResult(**{**result.__dict__, "json_path": str(root / "backtest.json"), "plot_path": str(plot)})
    write_json(out.to_dict(), root / "backtest.json")
    return out


def plot_policies(result: BacktestResult, path: Path) -> Path:
    """Left: mean NDCG@10 against training seconds per policy; right: served NDCG@10 per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost, time_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for p in result.policies:
        cost.scatter(p.train_s, p.mean_ndcg10, s=60)
        cost.annotate(f"{p.policy}\n{p.train_epochs} epochs", (p.train_s, p.mean_ndcg10), fontsize=8,
                      xytext=(6, 4), textcoords="offset points")
        x = [pd.Timestamp(w.split("/")[0]) for w in result.windows[1:]]
        time_ax.plot(x, p.ndcg10, "-o", ms=3, lw=1, label=p.policy)
    cost.set_xlabel("retraining compute (training seconds)")
    cost.set_ylabel("mean served NDCG@10")
    cost.set_title("quality against compute", fontsize=10)
    time_ax.set_ylabel("served NDCG@10")
    time_ax.set_title(f"per window (drift policies retrain at '{result.retrain_on}')", fontsize=10)
    time_ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        plt.close(fig)
