"""What a backtest found, per policy: served NDCG@10 by week, promotions, staleness, compute; its JSON and plot.

The records :func:`recsys_retrain.backtest.backtest` returns and writes, and the paired
interval it reads them with (:func:`paired_ci`): policies are compared week by week on
the same users, so the interval is over weeks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_retrain.io import write_json, write_with

REFERENCE_POLICIES = ("recent_pop", "ease")


@dataclass(frozen=True)
class PolicyResult:
    """One policy over the timeline: served NDCG@10 per window, what served it, and the retraining compute it spent.

    Attributes:
        staleness_days: per scored window, days between the window's start and the end
            of the served model's data (0: it has seen every day before the window).
        promoted_staleness_days: per promotion, days between the end of the window it
            was gated on and the end of the data of the model that then served (0: the
            refit has seen its gating window).
    """

    policy: str
    mean_ndcg10: float
    train_epochs: int
    train_s: float
    trains: int
    promotions: int
    ndcg10: tuple[float, ...]  # per scored window (1..N-1)
    retrained: tuple[bool, ...]
    staleness_days: tuple[float, ...] = ()
    promoted_staleness_days: tuple[float, ...] = ()
    refits_rejected: int = 0
    gate_policy: str = ""
    warm_starts: int = 0  # trainings that continued from the champion (calibrate's choice, drift_warm)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyResult:
        tuples = ("ndcg10", "retrained", "staleness_days", "promoted_staleness_days")
        return cls(**{**d, **{k: tuple(d.get(k, ())) for k in tuples}})


@dataclass(frozen=True)
class BacktestResult:
    """Every policy's result on the same windows, the drift verdicts that triggered retrains, and where the files are."""

    windows: tuple[str, ...]
    severities: tuple[str, ...]
    retrain_on: str
    policies: tuple[PolicyResult, ...]
    seconds: float
    gate_policy: str = ""
    refit: str = ""
    by_gate_policy: dict[str, tuple[PolicyResult, ...]] = field(default_factory=dict)
    json_path: str = ""
    plot_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policies": [p.to_dict() for p in self.policies],
                "by_gate_policy": {g: [p.to_dict() for p in ps] for g, ps in self.by_gate_policy.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BacktestResult:
        return cls(**{**d, "windows": tuple(d["windows"]), "severities": tuple(d["severities"]),
                      "policies": tuple(PolicyResult.from_dict(p) for p in d["policies"]),
                      "by_gate_policy": {g: tuple(PolicyResult.from_dict(p) for p in ps)
                                         for g, ps in d.get("by_gate_policy", {}).items()}})

    def policy(self, name: str) -> PolicyResult:
        return next(p for p in self.policies if p.policy == name)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``policy -> {mean_ndcg10, ci_vs_never, ci_vs_recent_pop, promotions, train_epochs, train_s, staleness_days}``.

        The CIs are paired bootstrap 95% intervals of the mean per-window difference
        (``paired_ci``); ``staleness_days`` is the mean over scored windows.
        """
        names = [p.policy for p in self.policies]
        out = {}
        for p in self.policies:
            out[p.policy] = {
                "mean_ndcg10": round(p.mean_ndcg10, 5),
                "ci_vs_never": paired_ci(p.ndcg10, self.policy("never").ndcg10) if "never" in names else None,
                "ci_vs_recent_pop": paired_ci(p.ndcg10, self.policy("recent_pop").ndcg10) if "recent_pop" in names else None,
                "promotions": p.promotions,
                "trains": p.trains,
                "train_epochs": p.train_epochs,
                "train_s": round(p.train_s, 1),
                "staleness_days": round(float(np.mean(p.staleness_days)), 2) if p.staleness_days else 0.0,
                "promoted_staleness_days": list(p.promoted_staleness_days),
                "refits_rejected": p.refits_rejected,
                "warm_starts": p.warm_starts,
            }
        return out


def paired_ci(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over windows with a paired bootstrap 95% interval (BCa, windows resampled).

    The window is the unit: both policies are scored on the same users of the same
    week, so the week's difficulty cancels in the difference, and what varies between
    weeks (which users came, what they found) is what the interval has to cover.

    Example:
        >>> ci = paired_ci([0.3, 0.32, 0.31, 0.35], [0.3, 0.3, 0.3, 0.3])
        >>> ci["diff"], ci["low"] > 0
        (0.02, True)
    """
    from scipy.stats import bootstrap

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean()) if len(d) else 0.0
    if len(d) < 2 or np.allclose(d, d[0]):
        return {"diff": round(mean, 5), "low": round(mean, 5), "high": round(mean, 5)}
    res = bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=10_000, method="BCa", random_state=seed)
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on a few distinct values
        res = bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=10_000, method="percentile", random_state=seed)
        low, high = res.confidence_interval
    return {"diff": round(mean, 5), "low": round(float(low), 5), "high": round(float(high), 5)}


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

    fig, (cost, time_ax) = plt.subplots(1, 2, figsize=(13, 4.4))
    x = [pd.Timestamp(w.split("/")[0]) for w in result.windows[1:]]
    for p in result.policies:  # labels in legends: points of near-equal policies would overlap their annotations
        reference = p.policy in REFERENCE_POLICIES
        label = f"{p.policy} (refit weekly)" if reference else f"{p.policy} ({p.promotions} promoted)"
        cost.scatter(p.train_s, p.mean_ndcg10, s=60, marker="s" if reference else "o", label=label, alpha=0.8)
        time_ax.plot(x, p.ndcg10, "--" if reference else "-", marker="o", ms=3, lw=1, label=p.policy)
    cost.set_xlabel("retraining compute (training seconds)")
    cost.set_ylabel("mean served NDCG@10")
    cost.set_title("quality against compute", fontsize=10)
    cost.legend(fontsize=7, loc="best")
    cost.margins(x=0.1, y=0.15)
    time_ax.set_ylabel("served NDCG@10")
    time_ax.set_title(f"per window (drift policies retrain at '{result.retrain_on}')", fontsize=10)
    time_ax.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        plt.close(fig)
