"""What the agent does with each value its parts produce (events.py), with each look at
WireGuard, and at each checkup: hands it to the part it concerns, in order. The parts own their
state; this module owns none. See docs/liveness.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from ikto.events import (
    EntryChecked,
    Event,
    Moved,
    OwnEntrySeen,
    PeersChanged,
    RebuildWatch,
    Reconnected,
    SnapshotLoaded,
    Tick,
)
from ikto.membership import selfcheck_interval
from ikto.models import WgDevice
from ikto.records import Report
from ikto.vitals import Review

if TYPE_CHECKING:
    from ikto.agent import Agent

log = logging.getLogger("ikto.agent")


class Dispatch:
    """Routes the agent's events to its parts (one queue, handled one at a time)."""

    def __init__(self, agent: Agent) -> None:
        self.a = agent
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.snapshot_applied = asyncio.Event()  # the bucket as read last is in WireGuard

    def emit(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            await self.on(await self.queue.get())

    async def ticks(self) -> None:
        """A checkup every heartbeat_interval (+-20 %, so that nodes do not move in step)."""
        while True:
            await asyncio.sleep(self.a.config.heartbeat_interval * random.uniform(0.8, 1.2))
            self.emit(Tick())

    async def on(self, event: Event) -> None:
        a = self.a
        match event:
            case SnapshotLoaded():
                a.vitals.restart_grace()
                a.applier.ready = True
                # Nodes put a lost entry back within one self-check: give them three.
                a.applier.hold_removals(3 * selfcheck_interval(a.config.heartbeat_interval, len(a.mesh)))
                await self.routes(None)
                await a.applier.full_reconcile()
                a.writer.changed()  # the file may hold an older key or mesh
                self.snapshot_applied.set()
            case PeersChanged(public_keys=touched):
                a.applier.mark(touched)
                if any(p.routes for _, p in a.mesh.others()) or a.reservations.decision.applied:
                    await self.routes(touched)
            case OwnEntrySeen(value=value, revision=revision):
                a.membership.seen(value, revision)
            case EntryChecked(revision=revision, anomaly=anomaly):
                a.follower.expect(revision)
                if anomaly:
                    await a.follower.check()
            case Moved(config=config):
                a.iface.moved(config)
                await asyncio.to_thread(a.iface.bring_up)
                a.follower.moved(a.spec())
                a.follower.rebuild("we moved to a new address")
                a.presence.rewrite()
                await a.writer.write()
            case RebuildWatch(reason=reason):
                a.follower.rebuild(reason)
            case Reconnected():
                log.info("reconnected to NATS; re-reading the bucket and checking our entry")
                a.follower.rebuild("reconnected to NATS")
                a.membership.poke()
                await a.membership.refresh_endpoints(None)  # the NAT may map us elsewhere now
            case Tick():
                if a.store is not None and a.store.connected and not a.membership.leaving:
                    await self.checkup()

    def observed(self, dev: WgDevice, taken: tuple[float, float]) -> None:
        """A look at WireGuard (`taken`: when the dump was read): learn signs of life, move
        endpoint trials on, update our report."""
        a = self.a
        a.vitals.observe(dev, taken)
        a.applier.mark(a.paths.observed(dev, a.mesh.peers()))
        if a.ready.is_set():
            self.report(a.vitals.review(a.presence.needed))

    async def checkup(self) -> None:
        """Every heartbeat_interval: read the records liveness needs, decide, and help others."""
        a = self.a
        review = a.vitals.review(a.presence.needed)
        await a.prober.probe(review.probe)
        a.presence.need(review.presence_needed)
        self.report(review)
        if a.follower.snapshot_done:
            a.applier.mark(a.vitals.expire())
        if (dev := a.applier.device) is not None:
            await a.prober.witness(dev, a.mesh.others(), len(a.mesh))
        await self.routes()
        if review.presence_needed:  # somebody cannot reach us: where do others see us?
            await a.membership.refresh_endpoints(await a.prober.sighting_of_us(a.membership.key))

    def report(self, review: Review) -> None:
        a = self.a
        a.presence.report(Report(
            a.follower.revision, len(a.mesh.peers()), review.in_wireguard, review.handshaking,
            review.unreachable,
        ))  # fmt: skip

    async def routes(self, touched: frozenset[str] | None = frozenset()) -> None:
        """Decide again which networks peers route for us (touched: the public keys whose
        entries changed; None: all); apply what changed."""
        a = self.a
        others, c = a.mesh.others(), a.config
        keys = None if touched is None else {k for k, p in others if p.public_key in touched}
        changed = await a.reservations.refresh(others, c.mesh_cidr, c.routes, a.membership.key, keys)
        if changed:
            a.applier.mark(changed)
            await a.applier.sync_routes()
