"""The verdict: each signal's result, the severity they add up to, and the reason.

``DriftReport`` holds plain values only, so it travels through XCom and JSON. The
severity rules: docs/drift.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from recsys_retrain.drift.signals import Observed, Signal
from recsys_retrain.settings import DriftSettings


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


def signal_result(signal: Signal, obs: Observed, note: str, calibrated: dict[str, tuple[float, float, float]], settings: DriftSettings) -> SignalResult:
    """``signal``'s result from its calibration; an untested one (``note``) keeps its floor as threshold."""
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


def verdict(
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
