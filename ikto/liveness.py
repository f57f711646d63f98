"""Liveness decisions as pure functions of evidence and time (no clock is read here).

A peer is `ok` (or `pending` until WireGuard holds it), `stale` once it has been silent for
`stale_after`, and `expired` (left out of WireGuard, its entry untouched) once the agent has
decided so after `remove_after`. The agent, the admin API and the tests call these same
functions; every verdict says which evidence it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    OK = "ok"
    PENDING = "pending"  # valid in the bucket, not in WireGuard yet
    STALE = "stale"
    EXPIRED = "expired"


class Evidence(StrEnum):
    """Where the last sign of life of a peer comes from."""

    ENTRY = "entry"  # the peer (re)wrote its bucket entry: server clock


@dataclass(frozen=True, slots=True)
class Policy:
    """The liveness settings (seconds): see README "Failure behaviour"."""

    stale_after: float
    remove_after: float
    reclaim_after: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """One peer's state, how long it has been silent, and the evidence behind it."""

    state: State
    silent_s: float | None
    evidence: Evidence | None


def silence(last: float | None, now: float | None, floor: float | None = None) -> float | None:
    """Seconds since `last` sign of life (None if unknown); `floor` restarts the clock.

    After an outage of our own every peer gets a fresh grace: a sign of life older than the
    floor counts as if it happened at the floor.
    """
    if last is None or now is None:
        return None
    if floor is not None and floor > last:
        last = floor
    return max(0.0, now - last)


def judge(silent_s: float | None, *, expired: bool, in_wireguard: bool, policy: Policy) -> Verdict:
    """The state shown for one peer."""
    evidence = Evidence.ENTRY if silent_s is not None else None
    if expired:
        return Verdict(State.EXPIRED, silent_s, evidence)
    if silent_s is not None and silent_s > policy.stale_after:
        return Verdict(State.STALE, silent_s, evidence)
    return Verdict(State.OK if in_wireguard else State.PENDING, silent_s, evidence)


@dataclass(frozen=True, slots=True)
class Expiry:
    """Which peers to leave out of WireGuard; `held_back` when mass silence stopped us."""

    expired: frozenset[str]
    held_back: bool = False
    silent: int = 0  # how many looked silent


def expire(silent: Mapping[str, float | None], already: Iterable[str], policy: Policy) -> Expiry:
    """Peers silent for remove_after are left out, and those already out stay out (a peer
    leaves `already` when it writes again) — unless more than half of all peers would be out,
    which says more about us than about them: then nothing changes.

    `silent` maps every peer's key (not ourselves) to its silence; `already` is the current set.
    """
    already = frozenset(already)
    out = {k for k, s in silent.items() if k in already or (s is not None and s > policy.remove_after)}
    if silent and len(out) > len(silent) / 2:
        return Expiry(already, held_back=True, silent=len(out))
    return Expiry(frozenset(out), silent=len(out))


def reclaimable(holder_silent_s: float | None, reclaim_after: float) -> bool:
    """May a claimant take over an address whose holder has been silent this long?"""
    return holder_silent_s is not None and holder_silent_s > reclaim_after
