"""Liveness decisions as pure functions of evidence and time (no clock is read here).

A peer is `ok` (or `pending` until WireGuard holds it) while its youngest sign of life is at
most `stale_after` old, `stale` after that, and `expired` (left out of WireGuard, its entry
untouched) once the agent has decided so after `remove_after`. The agent, the admin API and
the tests call these same functions; every verdict names the evidence it rests on.
See docs/liveness.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

SESSION_FRESH = 180.0
"""WireGuard's REJECT_AFTER_TIME: a handshake younger than this is a working session."""
REKEY_AFTER_TIME = 120.0
"""While we send (our keepalives), WireGuard renews the session this often: a peer that never
sends by itself (ikto v0.3 sets no keepalive) still answers a handshake every two minutes."""


class State(StrEnum):
    OK = "ok"
    PENDING = "pending"  # valid in the bucket, not in WireGuard yet
    STALE = "stale"
    EXPIRED = "expired"


class Evidence(StrEnum):
    """Where a sign of life of a peer comes from (docs/liveness.md)."""

    HANDSHAKE = "handshake"  # our WireGuard: a handshake or received bytes (our monotonic clock)
    PRESENCE = "presence"  # the peer's own alive.<id> record (server clock)
    WITNESS = "witness"  # another node saw the peer handshaking: seen.<id> (server clock)
    ENTRY = "entry"  # the peer (re)wrote its bucket entry (server clock)


@dataclass(frozen=True, slots=True)
class Policy:
    """The liveness settings (seconds): see README "Failure behaviour"."""

    stale_after: float
    remove_after: float
    reclaim_after: float


@dataclass(frozen=True, slots=True)
class Signs:
    """How old each kind of evidence about one peer is, in seconds (None: none known)."""

    handshake: float | None = None  # past the peer's expected cadence: see quiet()
    presence: float | None = None
    witness: float | None = None
    entry: float | None = None

    def youngest(self) -> tuple[Evidence, float] | None:
        """The freshest evidence and its age (ties go to the data plane)."""
        found = [(age, i, ev) for i, (ev, age) in enumerate(self._all()) if age is not None]
        if not found:
            return None
        age, _, ev = min(found)
        return ev, age

    def _all(self) -> tuple[tuple[Evidence, float | None], ...]:
        return (
            (Evidence.HANDSHAKE, self.handshake),
            (Evidence.PRESENCE, self.presence),
            (Evidence.WITNESS, self.witness),
            (Evidence.ENTRY, self.entry),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One peer's state, how long it has been silent, and the evidence behind it."""

    state: State
    silent_s: float | None
    evidence: Evidence | None


def cadence(*, keeps_alive: bool, keepalive: int, look_interval: float) -> float:
    """How long a live peer may stay quiet on our data plane, as we look at it.

    A peer sending keepalives every `keepalive` seconds (an ikto node: ours, the same setting)
    is heard at least that often; one that never sends by itself (ikto v0.3) answers the
    handshakes our keepalives cause, every REKEY_AFTER_TIME; with keepalives off, only a
    session's life (SESSION_FRESH) tells anything. Looks at WireGuard are `look_interval` apart.
    """
    if keepalive <= 0:
        return SESSION_FRESH + look_interval
    return (keepalive if keeps_alive else REKEY_AFTER_TIME) + look_interval


def quiet(data_plane_age: float | None, expected: float) -> float | None:
    """The data plane's silence: how far past its expected cadence a peer has been quiet."""
    return None if data_plane_age is None else max(0.0, data_plane_age - expected)


def age(then: float | None, now: float, floor: float | None = None) -> float | None:
    """Seconds from `then` to `now` (None if unknown, never negative); `floor` restarts it.

    After an outage of our own every peer gets a fresh grace: a sign older than the floor
    counts as if it came at the floor.
    """
    if then is None:
        return None
    if floor is not None and floor > then:
        then = floor
    return max(0.0, now - then)


def silence(signs: Signs) -> float | None:
    """How long the peer has been silent: the age of its youngest evidence."""
    y = signs.youngest()
    return None if y is None else y[1]


def judge(signs: Signs, *, expired: bool, in_wireguard: bool, policy: Policy) -> Verdict:
    """The state shown for one peer."""
    y = signs.youngest()
    evidence, silent = (None, None) if y is None else y
    if expired:
        return Verdict(State.EXPIRED, silent, evidence)
    if silent is not None and silent > policy.stale_after:
        return Verdict(State.STALE, silent, evidence)
    return Verdict(State.OK if in_wireguard else State.PENDING, silent, evidence)


@dataclass(frozen=True, slots=True)
class Expiry:
    """Which peers to leave out of WireGuard; `held_back` when mass silence stopped us."""

    expired: frozenset[str]
    held_back: bool = False
    silent: int = 0  # how many looked silent


def expire(silent: Mapping[str, float | None], already: Iterable[str], policy: Policy) -> Expiry:
    """Peers silent for remove_after are left out, and those already out stay out (a peer
    leaves `already` when it shows a sign of life again) — unless more than half of all peers
    would be out, which says more about us than about them: then nothing changes.

    `silent` maps every peer's key (not ourselves) to its silence; `already` is the current set.
    """
    already = frozenset(already)
    out = {k for k, s in silent.items() if k in already or (s is not None and s > policy.remove_after)}
    if silent and len(out) > len(silent) / 2:
        return Expiry(already, held_back=True, silent=len(out))
    return Expiry(frozenset(out), silent=len(out))


def back(signs: Signs, policy: Policy) -> bool:
    """Does an expired peer come back? Only with evidence younger than stale_after."""
    s = silence(signs)
    return s is not None and s <= policy.stale_after


def reclaimable(holder_silent_s: float | None, reclaim_after: float) -> bool:
    """May a claimant take over an address whose holder has been silent this long?"""
    return holder_silent_s is not None and holder_silent_s > reclaim_after


def needs_probe(signs: Signs, policy: Policy) -> bool:
    """Read the peer's presence (or witness) record? Only when what we learn for free — our
    own data plane and its entry — is older than half of stale_after."""
    free = [a for a in (signs.handshake, signs.entry) if a is not None]
    return not free or min(free) > policy.stale_after / 2


def needs_presence(
    quiet: float | None,
    silent: float | None,
    peer_presence: float | None,
    policy: Policy,
    *,
    first: bool,
    already: bool = False,
) -> bool:
    """Must we write our presence often for this peer? When our data plane has lost it (`quiet`
    past its rhythm by half of stale_after: it has lost us too, a handshake being mutual) while
    it is alive, so that it can learn from our record that we are alive.

    Who starts: a pair that loses its data plane would each wait for the other's record, so one
    side goes `first` (the lower public key) while the peer is alive by any evidence, and the
    other follows once the peer's own presence record is fresh (`peer_presence`): a node that
    died makes only the nodes below it in key order write, and only until it is stale.
    `already`: we write often now, and keep doing so until the peer is stale by more than half
    of stale_after again, so that a late record does not make both stop (hysteresis).
    """
    lost = quiet is None or quiet > policy.stale_after / 2
    if not lost or silent is None:
        return False
    if already:
        return silent <= policy.stale_after * 1.5
    alive = silent <= policy.stale_after
    return alive and (first or (peer_presence is not None and peer_presence <= policy.stale_after))


def witness_interval(observer: str, subject: str, observers: int, base: float, cap: float) -> float:
    """How often `observer` checks the witness record of `subject`: base × (1 + its rank in a
    hash order of the `observers`), at most `cap`. The first observer keeps the record fresh
    and the others step in only when it does not, so the reads stay O(1) per subject."""
    digest = hashlib.blake2b(f"{observer}\0{subject}".encode(), digest_size=8).digest()
    rank = int(int.from_bytes(digest, "big") / 2**64 * max(1, observers))
    return min(cap, base * (1 + rank))
