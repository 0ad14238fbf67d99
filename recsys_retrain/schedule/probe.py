"""The rate probe: races rate multipliers on shares of the first epoch by successive halving.

A rules-based plan knows a good rate only to within a factor of a few, and racing is
cheaper than the epochs a streak-driven raise (x1.5 per two improving cycles) would take
to get there. ``race`` is the tournament; it knows nothing of the scheduler, which hands
it three callables (save a candidate, restore one, start one at a multiplier) and goes
on from the winner (``AdaptiveScheduler.probe``). The rest ranks candidates from their
validation readings, and sizes the probe for ``calibrate``'s epoch budget.

Example:
    >>> rate = [1.0]
    >>> result = race((1.0, 2.0, 4.0, 8.0), lambda r: -abs(rate[0] - 4.0), save=lambda: rate[0],
    ...               restore=lambda saved: rate.__setitem__(0, saved), set_rate=lambda m: rate.__setitem__(0, m),
    ...               tol=0.0, z=None)
    >>> result.multiplier, probe_rounds(4), probe_passes(4)
    (4.0, 2, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any

from recsys_retrain.schedule.rules import lowered

ProbeReading = float | tuple[float, ...]  # a probe reading: the metric, or the per-user values it is the mean of


@dataclass(frozen=True)
class RaceResult:
    """The winner of a race, and every candidate's readings.

    Attributes:
        multiplier: the winning rate multiplier.
        saved: the winner's state after its last round (what ``save`` returned).
        readings: the winner's readings, one per round.
        field: multiplier -> its readings, for every candidate.
        degenerate: the candidates ``degenerate`` flagged after their last round.
    """

    multiplier: float
    saved: Any
    readings: list[ProbeReading]
    field: dict[float, list[ProbeReading]]
    degenerate: tuple[float, ...] = ()

    def scores(self, rates: Sequence[float]) -> str:
        """Every candidate's readings round by round, e.g. ``x1 0.1200 > 0.1300, x2 0.1100``."""
        return ", ".join(f"x{m:g} " + " > ".join(f"{reading_mean(v):.4f}" for v in self.field[m]) for m in rates)


def race(
    rates: Sequence[float],
    run: Callable[[int], float | Sequence[float]],
    *,
    save: Callable[[], Any],
    restore: Callable[[Any], None],
    set_rate: Callable[[float], None],
    tol: float,
    z: float | None,
    degenerate: Callable[[], bool] | None = None,
) -> RaceResult:
    """Races the multipliers ``rates`` by successive halving; returns the winner, whose state is not restored.

    ``run(round)`` trains one share of the first epoch (round ``round``'s share) at
    the current rates and returns the validation metric. Round 0 starts every
    candidate from the same weights; each later round continues the better half of
    the candidates, each from its own weights, optimiser states and scheduler state,
    on the next share, until one is left (two rounds for four candidates). Every
    round ranks by ``race_order``: the mean of a candidate's validations so far (one
    reading of a ranking metric on a small validation window is noisy, and early in
    training the order of the rates can still flip), with the candidates within
    ``tol`` (``plan.probe_tol``) of the best counted as tied and the higher rate first.
    The last round, which picks the run's rate, asks for more: when ``run`` returns the
    per-user values its metric is the mean of (the same users every time), a
    finalist within the tolerance is still behind, not tied, if a paired comparison
    of its users with the leader's puts it more than ``z`` (``plan.probe_z``) standard
    errors lower. Earlier rounds keep the tolerance alone: they only choose which
    candidates race on, and after a share of an epoch a higher rate often still reads
    lower for a while before it overtakes. ``degenerate()``, asked after each run, flags
    a candidate whose readings cannot be trusted to separate it from the rest (the
    trainer's: its user tower collapsed); among ties a flagged candidate ranks after
    every unflagged one.

    Args:
        rates: the candidate multipliers (at least one).
        run: trains round ``round``'s share at the current rates; returns the validation.
        save: the current state of a candidate (weights, optimisers, scheduler).
        restore: puts a state ``save`` returned back.
        set_rate: starts a candidate at a multiplier (round 0 only; later rounds go on
            from each candidate's own state).
        tol: relative shortfall from the best mean reading that still counts as a tie.
        z: standard errors of a paired per-user gap that break a tie in the last round (None: never).
        degenerate: whether the candidate just run is degenerate (None: none is).

    Returns:
        The winner, its state after the last round, its readings, and every candidate's.
    """
    start = save()
    alive: list[tuple[float, Any, list[ProbeReading]]] = [(m, start, []) for m in rates]
    field: dict[float, list[ProbeReading]] = {}
    flagged: set[float] = set()
    rounds = probe_rounds(len(rates))
    for round_ in range(rounds):
        raced = []
        for multiplier, saved, readings in alive:
            restore(saved)
            if round_ == 0:
                set_rate(multiplier)
            readings = [*readings, as_reading(run(round_))]
            if degenerate is not None and degenerate():
                flagged.add(multiplier)
            else:
                flagged.discard(multiplier)
            raced.append((multiplier, save(), readings))
        raced = race_order(raced, tol, z if round_ == rounds - 1 else None, flagged)
        alive = raced[: max(len(raced) // 2, 1)]
        field.update({m: r for m, _, r in raced})
    multiplier, saved, readings = raced[0]
    return RaceResult(multiplier, saved, readings, field, tuple(m for m in rates if m in flagged))


def as_reading(value: float | Sequence[float]) -> ProbeReading:
    """A validation value as the probe keeps it; anything non-finite reads as -inf (a diverged candidate)."""
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else -math.inf
    values = tuple(float(v) for v in value)
    return values if values and all(math.isfinite(v) for v in values) else -math.inf


def reading_mean(reading: ProbeReading) -> float:
    return fmean(reading) if isinstance(reading, tuple) else reading


def race_order(
    raced: list[tuple[float, Any, list[ProbeReading]]], tol: float, z: float | None = None,
    degenerate: Container[float] = (),
) -> list[tuple[float, Any, list[ProbeReading]]]:
    """Rate-probe candidates ``(multiplier, state, readings)`` from best to worst.

    A candidate whose mean reading is within ``tol`` of the best mean is a tie with it: the
    readings cannot tell such rates apart, and among ties the higher rate ranks first
    (cutting a rate later is one decision, and more gradient noise regularises), after
    every tied candidate not in ``degenerate`` when it is in it. The rest follow by mean
    reading; a stable sort keeps the lower rate first on an exact tie, and when every
    candidate diverged.

    With per-user readings and ``z``, a candidate within ``tol`` is still behind, not tied,
    when ``paired_gap`` puts it more than ``z`` standard errors below the best: the same
    users score both, so most of what makes one reading noisy (which users the window
    holds) cancels in the per-user differences, and a relative tolerance wide enough for
    the noise of unpaired means hides real gaps.

    Example:
        >>> [m for m, _, _ in race_order([(1.0, None, [0.10]), (2.0, None, [0.12]), (4.0, None, [0.11]),
        ...                               (8.0, None, [0.02])], tol=0.15)]
        [4.0, 2.0, 1.0, 8.0]
        >>> best, behind = (0.30, 0.20, 0.25, 0.35), (0.27, 0.18, 0.22, 0.32)  # every user lower
        >>> [m for m, _, _ in race_order([(1.0, None, [best]), (2.0, None, [behind])], tol=0.15, z=1.0)]
        [1.0, 2.0]
        >>> [m for m, _, _ in race_order([(1.0, None, [0.110]), (8.0, None, [0.107])], tol=0.15, degenerate={8.0})]
        [1.0, 8.0]
    """
    scored = sorted(((fmean(map(reading_mean, c[2])), c) for c in raced), key=lambda p: -p[0])  # each mean once
    top, leader = scored[0]
    if not math.isfinite(top):
        return [c for _, c in scored]
    bar = lowered(top, tol)

    def tied(mean: float, c: tuple[float, Any, list[ProbeReading]]) -> bool:
        if mean < bar:
            return False
        gap = paired_gap(leader[2], c[2]) if z is not None else None
        return gap is None or gap[0] <= z * gap[1]

    ties = [tied(m, c) for m, c in scored]
    return sorted((c for (_, c), t in zip(scored, ties) if t), key=lambda c: (c[0] in degenerate, -c[0])) + [
        c for (_, c), t in zip(scored, ties) if not t
    ]


def paired_gap(best: list[ProbeReading], other: list[ProbeReading]) -> tuple[float, float] | None:
    """Mean per-user shortfall of ``other`` behind ``best`` and its standard error; None without per-user readings.

    Each candidate's per-user values are averaged over its readings first (the same users
    every round), then differenced user by user.
    """
    if not best or len(best) != len(other) or not all(isinstance(r, tuple) for r in (*best, *other)):
        return None
    n = len(best[0])
    if n < 2 or any(len(r) != n for r in (*best, *other)):
        return None
    diffs = [fmean(b[u] for b in best) - fmean(o[u] for o in other) for u in range(n)]
    return fmean(diffs), stdev(diffs) / math.sqrt(n)


def probe_rounds(candidates: int) -> int:
    """Rounds of successive halving that leave one of ``candidates`` (one for a single candidate)."""
    return max(math.ceil(math.log2(candidates)), 1) if candidates > 0 else 0


def probe_passes(candidates: int) -> float:
    """Passes over the data that the probe's epoch costs (1.0: nothing extra).

    Each round trains its candidates on ``1 / rounds`` of the epoch and keeps the better half.
    """
    rounds, alive, total = probe_rounds(candidates), candidates, 0.0
    for _ in range(rounds):
        total, alive = total + alive / rounds, max(alive // 2, 1)
    return max(total, 1.0)
