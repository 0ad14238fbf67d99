"""Promotion and revert: the operations that move ``champion`` and ``previous``.

The gate lives in :mod:`recsys_retrain.gate` (pure functions of per-user metrics);
:func:`record_decision` records its decision on the challenger (the DAG's gate task),
:func:`apply_decision` carries it out (the promote path of the branch after it).
:func:`promote` and :func:`revert` are the same moves by hand (CLI) or by the
monitor. Every move goes through :func:`recsys_retrain.registry.aliases.move`: a
compare-and-set under the alias lock, logged in the alias history, so of two
processes that race, the second finds the aliases moved and changes nothing.

A reverted version carries ``reverted.*`` tags (why, when, on which window, by
whom) and may return only through a gate decision on a later window.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

from recsys_retrain.errors import RegistryError
from recsys_retrain.gate import GateDecision, window_end
from recsys_retrain.registry.aliases import CHAMPION, PREVIOUS, AliasMove, history, move, read_aliases, who
from recsys_retrain.registry.candidates import WINDOW_TAG
from recsys_retrain.registry.client import connect, model_version, quiet
from recsys_retrain.settings import Settings

logger = logging.getLogger(__name__)

DECISION_ARTIFACT = "gate_decision.json"
REVERTED_TAG = "reverted"


def reverted_on(settings: Settings, version: int) -> str | None:
    """The window on which ``version`` was reverted, or None if it never was."""
    tags = model_version(connect(settings), settings.model_name, version).tags
    if tags.get(REVERTED_TAG) != "true":
        return None
    return tags.get(f"{REVERTED_TAG}.window") or tags.get(f"{REVERTED_TAG}.at") or "unknown"


DECISION_METRICS = ("mean_delta", "ci_low", "ci_high", "sd_delta", "mde", "window_mde", "margin", "evidence_users")


def record_decision(decision: GateDecision, settings: Settings) -> bool:
    """Records the decision on the challenger, nothing moves; False when there is nothing to record.

    Tags on the version and its run (``gate.*``, one per field and one per check),
    ``gate_decision.json`` on the run, and its numbers as run metrics (``gate.mde``,
    ``gate.mean_delta``, ...) so that the MLflow UI can chart how much each decision
    could resolve. A decision that compares a version with itself (a retried cycle
    whose challenger was already promoted) is not recorded, so that it cannot
    overwrite the decision that promoted it; recording the same decision twice
    changes nothing.
    """
    if decision.challenger_version is None:
        raise RegistryError("the gate decision names no challenger version; pass challenger_version to decide()")
    if decision.champion_version is not None and int(decision.champion_version) == int(decision.challenger_version):
        logger.info("version %s is already the champion; decision not recorded", decision.challenger_version)
        return False
    client = connect(settings)
    version = int(decision.challenger_version)
    mv = model_version(client, settings.model_name, version)
    _record(client, settings, mv, decision)
    return True


def _record(client, settings: Settings, mv, decision: GateDecision) -> None:
    d = decision.to_dict()
    with quiet():
        for key, value in _decision_tags(decision).items():
            client.set_model_version_tag(settings.model_name, str(mv.version), key, value)
            if mv.run_id:
                client.set_tag(mv.run_id, key, value)
        if mv.run_id:
            client.log_dict(mv.run_id, d, DECISION_ARTIFACT)
            for key in DECISION_METRICS:
                value = d.get(key)
                if value is not None and math.isfinite(value):
                    client.log_metric(mv.run_id, f"gate.{key}", float(value))


def apply_decision(
    decision: GateDecision, settings: Settings, *, actor: str = "gate", record: bool = True, serve: int | None = None
) -> bool:
    """Records the decision on the challenger and, if it promotes, moves the aliases; True if promoted.

    ``serve`` is the version that takes ``champion`` when it is not the judged
    challenger itself: its refit through the window's end (``recsys_retrain.train.refit``),
    which has seen the window the decision was made on. The alias history names both.

    The decision is recorded as :func:`record_decision` does, unless ``record`` is
    False (the cycle's gate task recorded it before its branch chose the promote
    path). A promotion is a compare-and-set: ``champion`` must
    still be the version the decision was measured against, so of two gates that
    race, the second finds the champion moved and changes nothing (it returns
    False; re-gate against the new champion). ``previous`` and ``champion`` move
    together under the alias lock and the move is logged in the alias history.

    A decision that compares a version with itself (a retried cycle whose
    challenger was already promoted) is ignored, so that it cannot overwrite the
    decision that promoted it; applying the same decision twice is a no-op.
    """
    if decision.challenger_version is None:
        raise RegistryError("the gate decision names no challenger version; pass challenger_version to decide()")
    if decision.champion_version is not None and int(decision.champion_version) == int(decision.challenger_version):
        logger.info("version %s is already the champion; decision not applied", decision.challenger_version)
        return False
    client = connect(settings)
    name = settings.model_name
    version = int(decision.challenger_version)
    served = int(serve) if serve is not None else version
    mv = model_version(client, name, version)
    served_mv = mv if served == version else model_version(client, name, served)
    for checked in {mv.version: mv, served_mv.version: served_mv}.values():
        if decision.promote and checked.tags.get(REVERTED_TAG) == "true":
            was = checked.tags.get(f"{REVERTED_TAG}.window")
            end, then = window_end(decision.window), window_end(was)
            if end is None or then is None or end <= then:
                raise RegistryError(
                    f"version {checked.version} was reverted on window {was}; it needs a gate decision on a later window"
                )
    aliases_now = read_aliases(client, name)
    if decision.promote and aliases_now.get(CHAMPION) in (version, served):
        return True  # this decision was applied before (an Airflow retry)
    if record:
        _record(client, settings, mv, decision)
    if not decision.promote:
        return False
    # previous first: if the move is cut short, champion still serves the old version
    targets: dict[str, int | None] = {}
    if decision.champion_version is not None:
        targets[PREVIOUS] = int(decision.champion_version)
    targets[CHAMPION] = served
    reason = decision.reason if served == version else f"{decision.reason}; serving v{served}, the refit of v{version}"
    moved = move(
        client, settings, targets, actor=actor, reason=reason,
        evidence=f"run {mv.run_id} window {decision.window or mv.tags.get(WINDOW_TAG, '')}".strip(),
        expect={CHAMPION: decision.champion_version},
    )
    if moved is None:
        client.set_model_version_tag(name, str(version), "gate.applied", "False")
        client.set_model_version_tag(
            name, str(version), "gate.stale",
            f"champion moved from v{decision.champion_version} before this promotion; re-gate against the new one",
        )
        return False
    for applied in {version, served}:
        client.set_model_version_tag(name, str(applied), "gate.applied", "True")
    return True


def promote(settings: Settings, version: int, *, reason: str, actor: str = "cli promote") -> list[AliasMove]:
    """Makes ``version`` the champion by hand (the old champion becomes ``previous``).

    For operators; the automatic path is :func:`apply_decision`. A reverted version
    is refused: it may return only through a gate decision on a later window.
    """
    client = connect(settings)
    name = settings.model_name
    mv = model_version(client, name, version)
    if mv.tags.get(REVERTED_TAG) == "true":
        raise RegistryError(
            f"version {version} was reverted on window {mv.tags.get(REVERTED_TAG + '.window')}: "
            f"{mv.tags.get(REVERTED_TAG + '.reason', '')}; it needs a gate decision on a later window"
        )
    current = read_aliases(client, name).get(CHAMPION)
    if current == int(version):
        return []
    targets: dict[str, int | None] = {PREVIOUS: current} if current is not None else {}
    targets[CHAMPION] = int(version)
    moved = move(client, settings, targets, actor=actor, reason=reason, expect={CHAMPION: current})
    if moved is None:
        raise RegistryError(f"champion moved while promoting v{version}; try again")
    return moved


def revert(
    settings: Settings,
    *,
    reason: str,
    actor: str = "monitor",
    window: str | None = None,
    expected_champion: int | None = None,
) -> list[AliasMove]:
    """Rolls ``champion`` back to ``previous`` and tags the reverted version with why.

    Idempotent: with ``expected_champion`` set, a champion that is no longer that
    version means the revert already happened (or someone moved on) and nothing
    changes. The new ``previous`` is the version that was ``previous`` before the
    reverted promotion, taken from the alias history (none if unknown or reverted).
    """
    client = connect(settings)
    name = settings.model_name
    aliases_now = read_aliases(client, name)
    current, target = aliases_now.get(CHAMPION), aliases_now.get(PREVIOUS)
    if expected_champion is None:
        expected_champion = current
    if current is None or current != expected_champion:
        logger.info("champion is v%s, not v%s: nothing to revert", current, expected_champion)
        return []
    if target is None:
        raise RegistryError(f"champion v{current} has no previous version to revert to")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, value in {
        REVERTED_TAG: "true", f"{REVERTED_TAG}.reason": reason[:5000], f"{REVERTED_TAG}.at": stamp,
        f"{REVERTED_TAG}.window": window or stamp, f"{REVERTED_TAG}.by": who(actor),
    }.items():
        client.set_model_version_tag(name, str(current), key, value)
    before = [m for m in history(settings) if m.alias == PREVIOUS and m.to_version == target]
    older = before[-1].from_version if before else None
    if older is not None and reverted_on(settings, older) is not None:
        older = None
    moved = move(
        client, settings, {CHAMPION: target, PREVIOUS: older}, actor=actor,
        reason=f"revert v{current} -> v{target}: {reason}", evidence=f"window {window or ''}".strip(),
        expect={CHAMPION: current, PREVIOUS: target},
    )
    return moved or []


def _decision_tags(decision: GateDecision) -> dict[str, str]:
    d = decision.to_dict()
    tags = {f"gate.{key}": str(value) for key, value in d.items() if key != "checks"}
    for check in decision.checks:
        tags[f"gate.check.{check.name}"] = f"{'pass' if check.passed else 'FAIL'}: {check.detail}"
    return tags
