"""The aliases that carry the pipeline's state, moved together under a lock and logged.

Three aliases on ``settings.model_name`` carry the state of the pipeline:
``challenger`` (the latest candidate), ``champion`` (the version that serves) and
``previous`` (the champion before it, the target of a rollback). Stages are
deprecated in MLflow 3, so nothing here uses them.

MLflow keeps no history of aliases and has no compare-and-set on them, so this
module adds both, with nothing but the registry itself:

* every alias move is appended to the registered model's tags
  (``alias_history.000042`` = JSON: alias, from, to, when, who/what, why);
* moves happen under a lock, which is a registered model named
  ``<model>.alias-lock``: creating a registered model is atomic in every MLflow
  backend (a unique name), so exactly one process holds it; it carries an owner
  token and a lease so a crashed holder's lock can be broken;
* a multi-alias move is written first as an intent (``alias_op.pending``), then
  applied, then logged and cleared; the next move, under the lock, rolls a
  left-over intent forward, so an interrupted promotion never stays half-moved.

:func:`move` is the one way an alias changes; which moves to make is decided in
:mod:`recsys_retrain.registry.candidates` (a new challenger) and
:mod:`recsys_retrain.registry.promotion` (champion and previous).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from recsys_retrain.errors import RegistryError
from recsys_retrain.records import lenient_from_dict
from recsys_retrain.registry.client import connect, one_line
from recsys_retrain.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
HISTORY_PREFIX = "alias_history."
PENDING_TAG = "alias_op.pending"
LOCK_SUFFIX = ".alias-lock"


def read_aliases(client: MlflowClient, name: str, effective: bool = False) -> dict[str, int]:
    """Alias -> version; empty before the first registration (no registered model yet).

    With ``effective``, an interrupted alias move (a pending intent) is read as done,
    so readers never see a half-moved pair; the next move completes it for real.
    """
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
        aliases = {alias: int(v) for alias, v in rm.aliases.items()}
        if effective and PENDING_TAG in rm.tags:
            for m in json.loads(rm.tags[PENDING_TAG])["moves"]:
                if m["to_version"] is None:
                    aliases.pop(m["alias"], None)
                else:
                    aliases[m["alias"]] = int(m["to_version"])
        return aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise RegistryError(f"cannot read registered model {name!r}: {exc.message}") from exc


# --------------------------------------------------------------------------- alias history


@dataclass(frozen=True)
class AliasMove:
    """One alias change, as kept in the registered model's tags (MLflow keeps none)."""

    seq: int
    alias: str
    from_version: int | None
    to_version: int | None
    at: str
    actor: str
    reason: str
    op: str
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> AliasMove:
        return lenient_from_dict(cls, payload)


def _history_key(seq: int) -> str:
    return f"{HISTORY_PREFIX}{seq:06d}"


def history(settings: Settings) -> list[AliasMove]:
    """Every alias move of the model, oldest first (empty before the first registration)."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        tags = client.get_registered_model(settings.model_name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    moves = [AliasMove.from_dict(json.loads(v)) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(moves, key=lambda m: m.seq)


def who(actor: str) -> str:
    """``actor`` with the user, host and process behind it, as the history and the tags record it."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{actor} ({user}@{socket.gethostname()} pid {os.getpid()})"


# --------------------------------------------------------------------------- lock and intent log


@contextlib.contextmanager
def _locked(client: Any, settings: Settings, actor: str) -> Iterator[str]:
    """Holds the model's alias lock: a registered model ``<name>.alias-lock`` that only one process can create.

    A holder older than ``lock_lease_s`` is presumed dead and its lock is broken;
    waiting longer than ``lock_timeout_s`` raises ``RegistryError``.
    """
    from mlflow.exceptions import MlflowException

    g = settings.gate
    lock = settings.model_name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    deadline = time.monotonic() + g.lock_timeout_s
    pause = 0.05
    while True:
        try:
            client.create_registered_model(
                lock, tags={"owner": token, "actor": who(actor), "expires": str(time.time() + g.lock_lease_s)},
                description=f"alias lock of {settings.model_name}; held while aliases move",
            )
            break
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            holder = client.get_registered_model(lock).tags
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # released in between: try again at once
            raise
        if holder.get("owner") == token:
            break  # our create went through but its answer was lost
        if float(holder.get("expires", "0")) < time.time():
            logger.warning("breaking stale alias lock of %s held by %s", settings.model_name, holder.get("actor"))
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"alias lock {lock!r} is held by {holder.get('actor', '?')}; waited {g.lock_timeout_s:.0f}s"
            )
        time.sleep(pause * (1.0 + random.random()))  # nosec B311  # lock-wait jitter, not cryptography
        pause = min(pause * 2, 1.0)
    try:
        yield token
    finally:
        try:
            if client.get_registered_model(lock).tags.get("owner") == token:
                client.delete_registered_model(lock)
        except Exception as exc:  # the lease expires by itself
            logger.warning("could not release alias lock %s: %s", lock, one_line(exc))


def _model_state(client: Any, name: str) -> tuple[dict[str, int], dict[str, str]]:
    rm = client.get_registered_model(name)
    return {a: int(v) for a, v in rm.aliases.items()}, dict(rm.tags)


def _finish(client: Any, name: str, op: dict[str, Any]) -> None:
    """Applies a written intent: sets each alias to its target, logs each move, clears the intent.

    Idempotent, so a crash anywhere in here is repaired by running it again.
    """
    for m in op["moves"]:
        if m["to_version"] is None:
            with contextlib.suppress(Exception):
                client.delete_registered_model_alias(name, m["alias"])
        else:
            client.set_registered_model_alias(name, m["alias"], str(m["to_version"]))
    for m in op["moves"]:
        entry = AliasMove(m["seq"], m["alias"], m["from_version"], m["to_version"], op["at"], op["actor"],
                          op["reason"], op["op"], op.get("evidence", ""))
        client.set_registered_model_tag(name, _history_key(m["seq"]), json.dumps(entry.to_dict()))
    client.delete_registered_model_tag(name, PENDING_TAG)


def _recover(client: Any, name: str) -> bool:
    """Rolls forward an alias move that a crash or an outage interrupted; True if there was one."""
    _, tags = _model_state(client, name)
    if PENDING_TAG not in tags:
        return False
    op = json.loads(tags[PENDING_TAG])
    logger.warning("completing interrupted alias move %s by %s: %s", op["op"], op["actor"], op["reason"])
    _finish(client, name, op)
    return True


def recover(settings: Settings) -> bool:
    """Completes an interrupted alias move, if one was left; True if there was one."""
    client = connect(settings)
    if not read_aliases(client, settings.model_name) and not history(settings):
        return False
    with _locked(client, settings, "recover"):
        return _recover(client, settings.model_name)


def move(
    client: Any,
    settings: Settings,
    targets: dict[str, int | None],
    *,
    actor: str,
    reason: str,
    evidence: str = "",
    expect: dict[str, int | None] | None = None,
) -> list[AliasMove] | None:
    """Moves aliases together, under the lock, with a compare-and-set on ``expect``.

    Returns the moves made (empty when every alias already had its target), or
    None when an alias in ``expect`` no longer points where the caller saw it (the
    caller's evidence is stale; nothing moved).
    """
    name = settings.model_name
    with _locked(client, settings, actor):
        _recover(client, name)
        current, tags = _model_state(client, name)
        for alias_name, version in (expect or {}).items():
            if current.get(alias_name) != version:
                logger.warning("%s: %s is v%s, expected v%s; nothing moved", actor, alias_name,
                               current.get(alias_name), version)
                return None
        changes = {a: v for a, v in targets.items() if current.get(a) != v}
        if not changes:
            return []
        seqs = [int(k.removeprefix(HISTORY_PREFIX)) for k in tags if k.startswith(HISTORY_PREFIX)]
        first = max(seqs, default=0) + 1
        op = {
            "op": uuid.uuid4().hex[:12],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "actor": who(actor),
            "reason": reason[:2000],
            "evidence": evidence,
            "moves": [
                {"seq": first + i, "alias": a, "from_version": current.get(a), "to_version": v}
                for i, (a, v) in enumerate(changes.items())
            ],
        }
        client.set_registered_model_tag(name, PENDING_TAG, json.dumps(op))
        _finish(client, name, op)
    return [
        AliasMove(m["seq"], m["alias"], m["from_version"], m["to_version"], op["at"], op["actor"], op["reason"],
                  op["op"], evidence)
        for m in op["moves"]
    ]
