"""The project's calibrated drift signals as Evidently metrics, and its verdict as their tests.

Evidently's own ``ValueDrift`` tests rows of a column with a default statistic and a
fixed threshold; the project tests users (rows of one user are not independent) with
a statistic on user-weighted histograms and a threshold calibrated per check by user
permutations (docs/drift.md). Drawing Evidently's numbers beside the verdict would show
two verdicts on one page, so a snapshot carries the calibrated ones instead:

* per tested signal, a :class:`CalibratedSignal` of its value with the test
  ``value <= threshold`` (FAIL: the signal drifted, exactly as the verdict says), and one
  of its threshold (so the UI draws both over time);
* one :class:`DriftVerdict`: the severity level (0 none, 1 minor, 2 major) with the test
  ``level == 0``, named by the verdict's severity and reason.

Each metric's name says what the statistic is and why it is not Evidently's default.
"""

from __future__ import annotations

from typing import Any, Optional

from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric

SEVERITY_LEVEL = {"none": 0, "minor": 1, "major": 2}
EVIDENTLY_DEFAULT = {
    "numerical": "ValueDrift on rows: K-S p-value up to 1,000 rows, else normed Wasserstein at 0.1",
    "categorical": "ValueDrift on rows: chi-square p-value up to 1,000 rows, else Jensen-Shannon at 0.1",
}


VERDICT_ROW = "__verdict__"


def _row(current_data: Any, name: str) -> dict[str, Any]:
    frame = current_data.as_dataframe()
    rows = frame[frame["signal"] == name]
    if rows.empty:
        raise ValueError(f"the check's table has no row {name!r}")
    return rows.iloc[0].to_dict()


class CalibratedSignal(SingleValueMetric):
    """One tested drift signal's calibrated statistic (``quantity="value"``) or its calibrated threshold.

    Only the signal's name, method and quantity are the metric's parameters, so the
    Evidently UI draws one series per signal across snapshots; the numbers come from
    the check's table (:func:`signals_table`).
    """

    signal: str
    method: str
    quantity: str = "value"
    categorical: bool = False


class CalibratedSignalCalculation(SingleValueCalculation[CalibratedSignal]):
    row: Optional[dict] = None

    def calculate(self, context: Any, current_data: Any, reference_data: Optional[Any]) -> SingleValue:
        self.row = _row(current_data, self.metric.signal)
        return self.result(float(self.row[self.metric.quantity]))

    def display_name(self) -> str:
        m, r = self.metric, self.row
        if r is None:
            return f"{m.signal}: calibrated {m.method} {m.quantity}"
        if m.quantity == "threshold":
            return f"{m.signal}: calibrated threshold {r['threshold']:.4f} ({m.method}, permutations of users)"
        default = EVIDENTLY_DEFAULT["categorical" if m.categorical else "numerical"]
        return (f"{m.signal}: {m.method} {r['value']:.4f} vs calibrated threshold {r['threshold']:.4f} (permutation p "
                f"{r['p_value']:.3f}) -> {'drifted' if r['drifted'] else 'no drift'}. Users, not rows, are the units, "
                f"so Evidently's default ({default}) is not the project's test and is not shown")


class DriftVerdict(SingleValueMetric):
    """The check's severity as a level (0 none, 1 minor, 2 major), named by the verdict's reason."""

    check: str = "drift"


class DriftVerdictCalculation(SingleValueCalculation[DriftVerdict]):
    row: Optional[dict] = None

    def calculate(self, context: Any, current_data: Any, reference_data: Optional[Any]) -> SingleValue:
        self.row = _row(current_data, VERDICT_ROW)
        return self.result(float(self.row["value"]))

    def display_name(self) -> str:
        if self.row is None:
            return "drift verdict"
        return f"drift verdict: {self.row['severity']} ({self.row['note']})"


def signals_table(verdict: dict[str, Any]):
    """The check as a table Evidently runs on: one row per tested signal, and a row for the verdict."""
    import pandas as pd

    rows = [{"signal": s["name"], "value": float(s["value"]), "threshold": float(s["threshold"]),
             "p_value": float(s.get("p_value", 1.0)), "drifted": float(bool(s["drifted"])), "severity": "", "note": ""}
            for s in verdict["signals"] if s["tested"]]
    rows.append({"signal": VERDICT_ROW, "value": float(SEVERITY_LEVEL.get(verdict["severity"], 0)), "threshold": 0.0,
                 "p_value": 1.0, "drifted": float(verdict["severity"] != "none"), "severity": verdict["severity"],
                 "note": verdict["reason"]})
    return pd.DataFrame(rows)


def metrics_of(verdict: dict[str, Any], categorical: dict[str, bool]) -> list[SingleValueMetric]:
    """The snapshot's metrics for a ``DriftReport.to_dict()``: each tested signal's value (tested) and threshold, the verdict.

    ``categorical`` names which signals are categorical (for the note on Evidently's default).
    """
    from evidently.tests import eq, lte

    out: list[SingleValueMetric] = []
    for s in verdict["signals"]:
        if s["tested"]:
            cat = bool(categorical.get(s["name"], False))
            out.append(CalibratedSignal(signal=s["name"], method=s["method"], categorical=cat, tests=[lte(float(s["threshold"]))]))
            out.append(CalibratedSignal(signal=s["name"], method=s["method"], categorical=cat, quantity="threshold", tests=[]))
    out.append(DriftVerdict(tests=[eq(0)]))
    return out


def run_snapshot(verdict: dict[str, Any], categorical: dict[str, bool], window: str, timestamp: Any):
    """Evidently's snapshot of one check: the calibrated metrics and the verdict's tests, stamped with the window's end."""
    from evidently import DataDefinition, Dataset, Report

    table = signals_table(verdict)
    data = Dataset.from_pandas(table, data_definition=DataDefinition(
        numerical_columns=["value", "threshold", "p_value", "drifted"], categorical_columns=["signal", "severity"],
        text_columns=["note"]))
    report = Report(metrics_of(verdict, categorical), tags=["drift", verdict["severity"]],
                    metadata={"window": window, "severity": verdict["severity"]})
    return report.run(data, None, timestamp=timestamp)


def outcomes(snapshot_dict: dict[str, Any]) -> dict[str, bool]:
    """What the snapshot's tests say, per signal name and ``verdict``: True where the test FAILED (drifted / some drift).

    Read from ``Snapshot.dict()``: each test names the metric it is bound to.
    """
    names = {}
    for m in snapshot_dict.get("metrics", []):
        config = m.get("config") or {}
        names[m.get("id")] = config.get("signal") or ("verdict" if config.get("type", "").endswith("DriftVerdict") else None)
    out = {}
    for t in snapshot_dict.get("tests", []):
        name = names.get(t.get("metric_config", {}).get("metric_id")) or names.get(t.get("metric_id"))
        if name:
            out[name] = t.get("status") == "FAIL"
    return out
