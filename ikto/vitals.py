"""Signs of life of every peer — learned for free from WireGuard and the watch, or read on
demand from the bucket — and the decisions taken from them with liveness.py.

Data-plane signs are keyed by public key (WireGuard's identity), the others by bucket key.
See docs/liveness.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ikto import liveness
from ikto.clock import Clock
from ikto.liveness import Signs
from ikto.log import fields
from ikto.mesh import Mesh
from ikto.models import WgDevice

log = logging.getLogger("ikto.agent")

PROBE_BUDGET = 64  # records read per tick at most, however many peers look silent
RHYTHM_SLACK = 5.0  # at least: keepalives come up to ~0.3 s late (docs/facts.md), looks take time


@dataclass(slots=True)
class _Wire:
    """What our WireGuard showed of one public key."""

    rx: int
    handshake: int
    since: float  # when we first saw it in WireGuard (monotonic)
    sign_at: float | None = None  # last sign of life: a new handshake or more bytes (monotonic)
    session_at: float | None = None  # last sign the session works (monotonic)


@dataclass(slots=True)
class _Record:
    """The last read of a peer's presence or witness record."""

    stamp: float | None  # the record's server timestamp (POSIX seconds); None: absent
    read_at: float = 0.0  # when we read it, on the server's clock
    next_read: float = 0.0  # monotonic


@dataclass(frozen=True, slots=True)
class Review:
    """One pass over every peer: what to read, and whether peers need our presence often."""

    probe: list[tuple[str, bool]] = field(default_factory=list)  # (key, speaks for itself)
    presence_needed: bool = False
    unreachable: tuple[str, ...] = ()  # names of peers in WireGuard we have not heard for long
    in_wireguard: int = 0
    handshaking: int = 0  # peers with a working session (a handshake within 180 s)


class Vitals:
    """Owns the evidence about every peer and what the operator was told (warnings once)."""

    def __init__(
        self,
        policy: liveness.Policy,
        mesh: Callable[[], Mesh],
        clock: Clock,
        heartbeat_interval: float,
        keepalive: int,
        look_interval: Callable[[], float],
        public_key: str,
    ) -> None:
        self.policy = policy
        self._public_key = public_key
        self._mesh = mesh
        self._clock = clock
        self._hb = heartbeat_interval
        self._keepalive = keepalive
        self._look_interval = look_interval
        self._wire: dict[str, _Wire] = {}
        self._records: dict[str, _Record] = {}
        self._floor: float | None = None  # server clock: control-plane ages restart here
        self._looked_at: float | None = None  # monotonic time of the last look at WireGuard
        self._look_gap = 0.0  # seconds between the last two looks, as they happened
        self._mass_silence_warned = False

    # Gathering evidence

    def observe(self, dev: WgDevice, taken: tuple[float, float] | None = None) -> None:
        """A fresh `wg show dump`: new handshakes and moving receive counters are signs.

        `taken`: (monotonic, wall) time the dump was read, if it waited before reaching us."""
        now, wall = taken if taken is not None else (self._clock.mono(), self._clock.wall())
        if self._looked_at is not None:
            self._look_gap = max(0.0, now - self._looked_at)
        self._looked_at = now
        wire = self._wire
        for pk, p in dev.peers.items():
            w = wire.get(pk)
            if w is None:
                w = wire[pk] = _Wire(p.rx_bytes, p.latest_handshake, now)
                if p.latest_handshake:  # from before we looked: the wall clocks say how long ago
                    w.sign_at = w.session_at = now - max(0.0, wall - p.latest_handshake)
                continue
            # A counter that went down was reset (the peer was re-added): new bytes since then
            # are a sign too.
            if p.latest_handshake > w.handshake or p.rx_bytes > w.rx or 0 < p.rx_bytes < w.rx:
                w.sign_at = w.session_at = now
            w.rx, w.handshake = p.rx_bytes, p.latest_handshake
        for pk in wire.keys() - dev.peers.keys():
            del wire[pk]

    def recorded(self, key: str, stamp: datetime | None) -> None:
        """A probe read the record of the peer at `key` (stamp: its server timestamp)."""
        r = self._records.setdefault(key, _Record(None))
        r.stamp = stamp.timestamp() if stamp is not None else None
        r.read_at = self._clock.server()
        silent = liveness.silence(self._signs(key, floored=False))
        r.next_read = self._clock.mono() + self._probe_interval(silent)

    def restart_grace(self) -> None:
        """After an outage of ours (a fresh snapshot), every peer gets a fresh grace."""
        self._floor = self._clock.server()

    def _probe_interval(self, silent: float | None) -> float:
        # A peer silent for long is read less often: a dead one costs one read per
        # reclaim_after/4 at most, a newly silent one is read every heartbeat.
        s = silent or 0.0
        return max(self._hb, min(s / 10, self.policy.reclaim_after / 4))

    # Reading it

    def signs(self, key: str) -> Signs:
        """The age of each kind of evidence about the peer at `key`."""
        return self._signs(key, floored=True)

    def _signs(self, key: str, *, floored: bool) -> Signs:
        mesh = self._mesh()
        server = self._clock.server()
        floor = self._floor if floored else None
        held = mesh.entries.get(key)
        w = self._wire.get(held[1].public_key) if held is not None else None
        r = self._records.get(key)
        # A record's age as of our last read of it (like the data plane, up to our last look):
        # a peer must not seem to age between two reads.
        record = liveness.age(r.stamp, r.read_at, floor) if r is not None else None
        speaks = held is not None and held[1].speaks
        # The data plane is measured up to our last look at it, not to now (looks are up to a
        # minute apart in a large mesh), and past the cadence a live peer keeps on it.
        looked = self._looked_at if self._looked_at is not None else self._clock.mono()
        dp_age = None if w is None or w.sign_at is None else max(0.0, looked - w.sign_at)
        expected = liveness.cadence(keeps_alive=speaks, keepalive=self._keepalive,
                                    look_interval=self._look_interval())
        return Signs(
            handshake=liveness.quiet(dp_age, expected),
            presence=record if speaks else None,
            witness=None if speaks else record,
            entry=liveness.age(mesh.written.get(key), server, floor),
        )

    def verdict(self, key: str, in_wireguard: bool) -> liveness.Verdict:
        """The state shown for the peer at `key`."""
        expired = key in self._mesh().expired
        return liveness.judge(self.signs(key), expired=expired, in_wireguard=in_wireguard, policy=self.policy)

    def session_fresh(self, public_key: str) -> bool:
        """Does WireGuard hold a working session with this peer (a sign within 180 s)?"""
        w = self._wire.get(public_key)
        return w is not None and w.session_at is not None and (
            self._clock.mono() - w.session_at < liveness.SESSION_FRESH
        )

    def past_rhythm(self, public_key: str) -> bool:
        """Has the peer been quiet on our data plane for a look past its rhythm (as of our last
        look)? A live peer never is: its keepalive plus a look is its rhythm already."""
        w = self._wire.get(public_key)
        held = self._mesh().holder(public_key)
        if w is None or held is None:
            return False
        looked = self._looked_at if self._looked_at is not None else self._clock.mono()
        # Slack: one look, or the last gap between looks if it was longer (a busy host looks late).
        look = max(self._look_interval(), self._look_gap, RHYTHM_SLACK)
        own = liveness.cadence(keeps_alive=held[1].speaks, keepalive=self._keepalive, look_interval=look)
        quiet = liveness.quiet(looked - max(w.sign_at or w.since, w.since), own)
        return quiet is not None and quiet > look

    def handshake_age(self, public_key: str) -> float | None:
        w = self._wire.get(public_key)
        return None if w is None or w.sign_at is None else self._clock.mono() - w.sign_at

    # Deciding

    def review(self, presence_often: bool = False) -> Review:
        """Which records to read now, and whether peers need our presence often (we write it
        often now: `presence_often`)."""
        now = self._clock.mono()
        looked = self._looked_at if self._looked_at is not None else now
        mesh = self._mesh()
        due: list[tuple[float, str, bool]] = []
        needed = False
        expected = liveness.cadence(
            keeps_alive=True, keepalive=self._keepalive, look_interval=self._look_interval()
        )
        unreachable: list[str] = []
        in_wireguard = handshaking = 0
        for key, (_, peer) in mesh.entries.items():
            if key == mesh.spec.self_key:
                continue
            signs = self._signs(key, floored=False)
            w_ = self._wire.get(peer.public_key)
            if w_ is not None:
                in_wireguard += 1
                handshaking += self.session_fresh(peer.public_key)
                # Quick enough for `ikto status --mesh` to name a broken pair within a minute.
                if self.past_rhythm(peer.public_key):
                    unreachable.append(peer.name or key)
            r = self._records.get(key)
            if liveness.needs_probe(signs, self.policy) and (r is None or r.next_read <= now):
                due.append((r.next_read if r else 0.0, key, peer.speaks))
            w = self._wire.get(peer.public_key)
            if peer.speaks and w is not None and not needed:  # a peer we hold, able to read ours
                gap = liveness.quiet(looked - max(w.sign_at or w.since, w.since), expected)
                needed = liveness.needs_presence(
                    gap, liveness.silence(signs), signs.presence, self.policy,
                    first=self._public_key < peer.public_key, already=presence_often,
                )
        due.sort()
        probe = [(k, speaks) for _, k, speaks in due[:PROBE_BUDGET]]
        return Review(probe, needed, tuple(sorted(unreachable)), in_wireguard, handshaking)

    def expire(self) -> set[str]:
        """Decide which peers are out of WireGuard now; the public keys whose state changed."""
        mesh = self._mesh()
        keys = [k for k in mesh.entries if k != mesh.spec.self_key]
        silent = {k: liveness.silence(self.signs(k)) for k in keys}
        # Out stays out until a real sign of life (the grace after an outage is not one).
        already = {k for k in mesh.expired if not liveness.back(self._signs(k, floored=False), self.policy)}
        decision = liveness.expire(silent, already, self.policy)
        if decision.held_back:
            if not self._mass_silence_warned:
                log.warning("more than half of the peers look silent: not removing any",
                            extra=fields(silent=decision.silent, peers=len(silent)))
                self._mass_silence_warned = True
            return mesh.set_expired(set(decision.expired))
        self._mass_silence_warned = False
        for k in decision.expired - mesh.expired:
            log.warning("peer silent too long; removed from WireGuard, entry kept",
                        extra=fields(node=mesh.entries[k][1].name, key=k, silent_s=round(silent[k] or 0)))
        for k in mesh.expired - decision.expired:
            log.info("peer alive again; back in WireGuard", extra=fields(node=mesh.entries[k][1].name, key=k))
        return mesh.set_expired(set(decision.expired))
