"""The gate step of a cycle, as I/O around the pure gate: register, gather the evidence, decide, then promote or keep.

The DAG shows the decision: its ``gate`` task calls :func:`judge` (register the
challenger, decide, record the decision on the version), an ``@task.branch``
follows the decision's ``promote``, and the two paths call ``cycle.refit`` then
:func:`promote` (refit the challenger through the window's end, then move the
aliases to the refit, ``recsys_retrain.train.refit``) or :func:`keep` (the champion
stays); both write ``summary.json``. ``recsys_retrain.cycle.gate`` runs the same
steps in one call.

Lineage: every version carries ``data_start``/``data_end``, the span of interactions
it has seen (a challenger: its training data, which ends at its window's start); a
refit also carries ``refit_of`` (the gated version) and ``refit`` (its mode), and the
gated version ``refit.version``, so the registry tells what serves, what was judged,
and on what data each was trained.

The evidence is this window's per-user metrics (``per_user_metrics.json``, written
by the evaluate step) and, when ``gate.pool_windows`` allows it and this window is
underpowered, the per-user metrics of earlier cycles in the same runs folder that
judged the same champion (:func:`earlier_scores`). Those earlier windows paired the
champion with that cycle's challenger, a model of the same recipe trained on the
data before that window; this cycle's challenger cannot be scored on them, as it
was trained on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys_retrain.errors import PipelineError
from recsys_retrain.gate import GateDecision, decide
from recsys_retrain.io import utc, write_json
from recsys_retrain.paths import CyclePaths
from recsys_retrain.power import PairedScores
from recsys_retrain.records import json_float
from recsys_retrain.settings import Settings


def register(p: CyclePaths, pulled: dict[str, Any], drift_result: dict[str, Any], trained: dict[str, Any],
             evaluated: dict[str, Any], s: Settings):
    """Logs the challenger with its drift report, profile, plan, trace and curves; registered as ``challenger``."""
    from recsys_retrain.model import FEATURE_SERVICE
    from recsys_retrain.registry import candidates
    from recsys_retrain.registry.candidates import DATA_END_TAG, DATA_START_TAG
    from recsys_retrain.schedule.trace import run_metrics, run_params
    from recsys_retrain.train.checkpoints import load_checkpoint

    window = f"{pulled['start']}/{pulled['end']}"
    drift_files = (("drift.html", "html"), ("drift.json", "json"))
    artifacts = {name: Path(drift_result[key]) for name, key in drift_files if drift_result[key]}
    artifacts["profile.json"] = p.profile
    for name, path in (("plan.json", p.plan), ("trace.json", Path(trained["trace"]) if trained.get("trace") else None)):
        if path is not None and path.exists():
            artifacts[name] = path
    trace = json.loads(artifacts["trace.json"].read_text()) if "trace.json" in artifacts else None
    if trace is not None:
        from recsys_retrain.schedule.plot import curves

        artifacts["curves.png"] = curves(trace, p.model_dir / "curves.png")
    candidate = candidates.log_candidate(
        load_checkpoint(Path(trained["checkpoint"])),
        settings=s,
        window=window,
        params={**s.train.model_dump(), "rows_history": pulled["rows_history"], **run_params(p.plan)},
        metrics={
            **{k: v for k, v in evaluated["challenger"].items() if k != "notes"},
            "train_seconds": trained["seconds"],
            "final_loss": trained["epoch_losses"][-1],
            "epochs_run": len(trained["epoch_losses"]),
            **run_metrics(trained),
        },
        artifacts=artifacts,
        tags={"drift.severity": drift_result["severity"], "window": window, "feature_service": FEATURE_SERVICE,
              DATA_START_TAG: trained.get("data_start") or history_start(p), DATA_END_TAG: pulled["start"],
              **({"warm_from": trained["warm_from"]} if trained.get("warm_from") else {}),
              **{f"note.{k}": v for k, v in evaluated["challenger"].get("notes", {}).items()}},
    )
    if trace is not None:
        from recsys_retrain.schedule.plot import log_to_mlflow

        log_to_mlflow(trace, candidate.run_id, s.mlflow_uri)
    return candidate


def history_start(p: CyclePaths) -> str:
    """The first interaction of the cycle's history, ISO ("" when it is empty)."""
    import pandas as pd

    first = pd.read_parquet(p.history, columns=["timestamp"])["timestamp"].min()
    return pd.Timestamp(first).isoformat() if pd.notna(first) else ""


def earlier_scores(s: Settings, before: str, champion_version: int | None, limit: int) -> list[PairedScores]:
    """Paired per-user NDCG@K of up to ``limit`` earlier cycles that judged ``champion_version``, newest first.

    A cycle counts when its ``per_user_metrics.json`` names the same champion version
    and its window ends no later than ``before`` (the start of this window), so no
    user-week is counted twice and no window overlaps the one being decided.
    """
    from recsys_retrain.evaluate import UserEval

    if champion_version is None or limit < 1:
        return []
    cutoff, found = utc(before), []
    for path in s.runs_dir.glob("*/per_user_metrics.json"):
        payload = json.loads(path.read_text())
        window, champion = payload.get("window"), payload.get("champion")
        if champion is None or window is None or payload.get("champion_version") != champion_version:
            continue
        end = utc(window.split("/")[-1])
        if end <= cutoff:
            found.append((end, window, UserEval.from_dict(payload["challenger"]), UserEval.from_dict(champion)))
    found.sort(key=lambda row: row[0], reverse=True)
    return [PairedScores(ch.ndcg, cp.ndcg, window) for _, window, ch, cp in found[:limit]]


def judge(p: CyclePaths, pulled: dict[str, Any], drift_result: dict[str, Any], trained: dict[str, Any],
          evaluated: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Registers the challenger, decides on the evidence, records the decision; returns what the branch needs.

    The decision goes to ``gate_decision.json`` in the cycle folder and onto the
    version and its run (tags, artifact, ``gate.*`` metrics such as ``gate.mde``).
    Nothing moves here: :func:`promote` or :func:`keep` follows.
    """
    from recsys_retrain.evaluate import UserEval
    from recsys_retrain.registry import candidates, promotion

    candidate = register(p, pulled, drift_result, trained, evaluated, s)
    window = f"{pulled['start']}/{pulled['end']}"
    per_user = json.loads(Path(evaluated["per_user"]).read_text())
    model, load_error = candidates.try_load(s, candidate.version)  # the registered artifact, not the checkpoint
    decision = decide(
        UserEval.from_dict(per_user["challenger"]) if model is not None else None,
        UserEval.from_dict(per_user["champion"]) if per_user["champion"] else None,
        s.gate,
        challenger_version=candidate.version,
        champion_version=evaluated["champion_version"],
        window=window,
        load_error=load_error,
        champion_error=evaluated.get("champion_error"),
        reverted_on=promotion.reverted_on(s, candidate.version),
        earlier=earlier_scores(s, pulled["start"], evaluated["champion_version"], s.gate.pool_windows - 1),
    )
    promotion.record_decision(decision, s)
    write_json(decision.to_dict(), p.decision)
    return {
        "run_dir": str(p.root),
        "window": window,
        "rows_window": pulled["rows_window"],
        "drift": drift_result["severity"],
        "version": candidate.version,
        "promote": decision.promote,
        "reason": decision.reason,
        **power_numbers(decision),
        "decision": str(p.decision),
    }


REFIT_SUMMARY = ("mode", "refit_version", "ok", "reason", "refit_ndcg", "gated_ndcg", "epochs", "seconds", "data_end")


def power_numbers(d: GateDecision) -> dict[str, Any]:
    """The decision's policy and power, as JSON-safe numbers for XCom and ``summary.json``."""
    return {
        "policy": d.policy,
        "mean_delta": json_float(d.mean_delta),
        "mde": d.mde,
        "window_mde": d.window_mde,
        "margin": d.margin,
        "evidence_users": d.evidence_users,
        "evidence_windows": len(d.evidence_windows),
    }


def promote(judged: dict[str, Any], s: Settings, refitted: dict[str, Any] | None = None) -> dict[str, Any]:
    """Carries out a promoting decision (a compare-and-set on the aliases); writes and returns ``summary.json``.

    ``champion`` moves to ``refitted["served_version"]`` (the refit step's result: the
    refit, or the gated challenger when the refit is off or failed its sanity check);
    without it, to the gated challenger. ``promoted`` in the summary is False when the
    champion moved since the decision (the registry tags the version ``gate.stale``).
    """
    from recsys_retrain.registry import promotion

    decision = read_decision(judged)
    if not decision.promote:
        raise PipelineError(f"the gate kept the champion ({decision.reason}); the promote path must not run")
    serve = refitted.get("served_version") if refitted else None
    promoted = promotion.apply_decision(decision, s, actor="gate", record=False, serve=serve)
    return summarise(judged, decision, promoted, refitted)


def keep(judged: dict[str, Any]) -> dict[str, Any]:
    """The champion stays (the decision is already recorded on the challenger); writes and returns ``summary.json``."""
    decision = read_decision(judged)
    if decision.promote:
        raise PipelineError("the gate promoted the challenger; the keep path must not run")
    return summarise(judged, decision, False)


def read_decision(judged: dict[str, Any]) -> GateDecision:
    """The decision :func:`judge` wrote into the cycle folder (the file, not the XCom, is the record)."""
    path = Path(judged["decision"])
    if not path.exists():
        raise PipelineError(f"no gate decision at {path}: the gate step has not run for this window")
    return GateDecision.from_dict(json.loads(path.read_text()))


def summarise(
    judged: dict[str, Any], d: GateDecision, promoted: bool, refitted: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The cycle's outcome in one small dict, written as ``summary.json`` (the join task returns it).

    ``version`` is the judged challenger; ``served_version`` the version that serves
    after a promotion (its refit, or itself), None when nothing was promoted; ``refit``
    the refit step's mode, outcome and reason.
    """
    summary = {
        "window": judged["window"],
        "rows_window": judged["rows_window"],
        "drift": judged["drift"],
        "challenger_ndcg": d.challenger_value,
        "champion_ndcg": d.champion_value,
        "ci": [d.ci_low, d.ci_high],
        "version": d.challenger_version,
        "promoted": promoted,
        "served_version": ((refitted or {}).get("served_version") or d.challenger_version) if promoted else None,
        "refit": {k: (refitted or {}).get(k) for k in REFIT_SUMMARY} if refitted else None,
        "reason": d.reason,
        **power_numbers(d),
    }
    write_json(summary, CyclePaths(Path(judged["run_dir"])).summary)
    return summary
