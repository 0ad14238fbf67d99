"""The refit step of a cycle, as I/O around ``recsys_retrain.train.refit``: refit, check, register, record.

On the promote path, before the champion moves, :func:`refit` refits the gated
challenger through the window's end (``train.refit``) with
:func:`~recsys_retrain.train.refit.refit_model` on the cycle's history, window and
catalogue (its data and model go to the cycle's ``refit/`` folder), then runs
:func:`~recsys_retrain.train.refit.sanity_check`. A refit that passes is registered as
its own version (``refit_of`` = the gated version, ``data_start``/``data_end`` = the
span it has seen, ``refit`` = the mode; the gated version gets ``refit.version``) and
is what ``gating.promote`` serves. A refit that fails to train or fails the check is
not registered: the gated challenger serves, and the reason is recorded on it
(``refit.fallback``), in ``refit.json`` and in the summary. A bad refit never blocks a
promotion and never serves.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import file_lock, write_json
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings

log = logging.getLogger(__name__)


def refit(p: CyclePaths, pulled: dict[str, Any], trained: dict[str, Any], judged: dict[str, Any],
          s: Settings) -> dict[str, Any]:
    """Refits, checks and registers; returns the small dict the promote step needs, written as ``refit.json``.

    Keys: ``mode``, ``gated_version``, ``refit_version`` (None when nothing was
    registered), ``served_version`` (what ``champion`` moves to), ``ok`` and ``reason``
    (the sanity check's), ``refit_ndcg``/``gated_ndcg`` (on the window; in-sample for the
    refit), ``epochs``, ``seconds``, ``checkpoint`` and ``data_end``. One refit per
    window at a time (a lock); a retry with the same settings reuses ``refit.json``.
    """
    from recsys_retrain.registry import candidates

    if not judged["promote"]:
        raise PipelineError(f"the gate kept the champion ({judged['reason']}); the refit runs on the promote path only")
    gated, mode = int(judged["version"]), s.train.refit
    key = {"train": s.train.model_dump(mode="json"), "tolerance": s.gate.refit_tolerance, "gated": gated}
    with file_lock(p.root / ".refit.lock"):
        if p.refit.exists():
            previous = json.loads(p.refit.read_text())
            if previous["key"] == json.loads(json.dumps(key, default=str)):
                return {**previous["result"], "reused": str(p.refit)}
        result = _refit(p, s, pulled, trained, judged, gated, mode)
        if mode != "off":
            outcome = {"refit.version": result["refit_version"]} if result["ok"] else {"refit.fallback": result["reason"]}
            candidates.tag_version(s, gated, outcome)
        write_json({"key": key, "result": result}, p.refit)
    return result


def _refit(p: CyclePaths, s: Settings, pulled: dict[str, Any], trained: dict[str, Any], judged: dict[str, Any],
           gated: int, mode: str) -> dict[str, Any]:
    from recsys_retrain.records import json_float
    from recsys_retrain.registry import candidates
    from recsys_retrain.registry.candidates import (
        DATA_END_TAG,
        DATA_START_TAG,
        REFIT_TAG,
    )
    from recsys_retrain.train.checkpoints import load_checkpoint
    from recsys_retrain.train.refit import SanityResult, refit_model, sanity_check

    base = {"mode": mode, "gated_version": gated, "refit_version": None, "served_version": gated, "epochs": 0,
            "seconds": 0.0, "checkpoint": trained["checkpoint"], "refit_ndcg": None, "gated_ndcg": None,
            "data_end": pulled["start"]}
    if mode == "off":
        return {**base, "ok": True, "reason": "train.refit is off: the gated challenger serves as judged"}
    history, window, catalogue = (pd.read_parquet(path) for path in (p.history, p.holdout, p.catalogue))
    plan = json.loads(p.plan.read_text()) if p.plan.exists() else None
    try:
        result = refit_model(history, window, catalogue, Path(trained["checkpoint"]), p.refit_dir, s, mode, plan)
        model = load_checkpoint(Path(result.checkpoint))
        check = sanity_check(model, load_checkpoint(Path(trained["checkpoint"])), history, window, s)
    except Exception as exc:  # a refit that breaks must not block the promotion it serves: the gated one serves
        log.exception("refit of v%s failed; the gated challenger serves", gated)
        first = str(exc).splitlines()[0] if str(exc) else ""
        result, check = None, SanityResult(False, f"the refit failed ({type(exc).__name__}: {first}): the gated "
                                                  "challenger serves", math.nan, math.nan)
    numbers = {"ok": check.ok, "reason": check.reason, "refit_ndcg": json_float(check.refit_ndcg),
               "gated_ndcg": json_float(check.gated_ndcg)}
    if result is None:
        return {**base, **numbers}
    numbers.update(epochs=result.epochs, seconds=result.seconds, checkpoint=result.checkpoint)
    if not check.ok:
        return {**base, **numbers}
    data_start = result.data_start if mode == "scratch" else (trained.get("data_start") or result.data_start)
    refit_candidate = candidates.log_refit(
        model, settings=s, gated=gated, window=judged["window"],
        params={**s.train.model_dump(), "refit.rows": result.rows},
        metrics={"refit.seconds": result.seconds, "refit.epochs": result.epochs,
                 "refit.window_ndcg_in_sample": check.refit_ndcg, "refit.gated_window_ndcg": check.gated_ndcg},
        tags={REFIT_TAG: mode, DATA_START_TAG: data_start, DATA_END_TAG: pulled["end"], "refit.sanity": check.reason},
    )
    return {**base, **numbers, "refit_version": refit_candidate.version, "served_version": refit_candidate.version,
            "data_end": pulled["end"]}
