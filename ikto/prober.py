"""The bucket reads and writes that liveness needs beyond the watch (docs/liveness.md):
peers' presence and witness records read on demand, witness records written for peers that
cannot speak for themselves, and what other nodes report seeing of us."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from ikto import ipam, liveness, records
from ikto.clock import Clock
from ikto.log import fields
from ikto.models import Peer, WgDevice
from ikto.store import KeyExistsError, RevisionMismatchError, Store, StoreError
from ikto.vitals import Vitals

log = logging.getLogger("ikto.agent")
T = TypeVar("T")

PARALLEL = 16  # reads in flight at once


class Prober:
    """Owns when each witness duty is next due."""

    def __init__(
        self, name: str, public_key: str, clock: Clock, vitals: Vitals, policy: liveness.Policy
    ) -> None:
        self._name = name
        self._public_key = public_key
        self._clock = clock
        self._vitals = vitals
        self._policy = policy
        self._store: Store | None = None
        self._duty_at: dict[str, float] = {}  # public key -> monotonic time of the next check
        self.reads = 0
        self.witness_writes = 0

    def attach(self, store: Store) -> None:
        self._store = store

    async def probe(self, wanted: list[tuple[str, bool]]) -> None:
        """Read the presence (ikto) or witness (v0.3) record of these peers' keys."""
        await _each(wanted, lambda item: self._probe_one(*item))

    async def _probe_one(self, key: str, speaks: bool) -> None:
        assert self._store is not None
        record = ipam.alive_key(key) if speaks else ipam.seen_key(key)
        try:
            got = await self._store.get(record)
        except StoreError as e:
            log.debug("reading a liveness record failed", extra=fields(key=record, error=e))
            return
        self.reads += 1
        self._vitals.recorded(key, got.created if got is not None else None)

    async def witness(self, dev: WgDevice, peers: Iterable[tuple[str, Peer]], mesh_size: int) -> None:
        """For peers our WireGuard sees: keep `seen.<id>` fresh for those that never write their
        own presence (ikto v0.3), and report the endpoint we see when the peer does not list it
        among its candidates (it is its public mapping behind a NAT)."""
        now = self._clock.mono()
        due: list[tuple[str, Peer, str | None, float]] = []
        for key, peer in peers:
            have = dev.peers.get(peer.public_key)
            if have is None or not self._vitals.session_fresh(peer.public_key):
                continue
            report = have.endpoint if have.endpoint and have.endpoint not in peer.candidates() else None
            if peer.speaks and report is None:
                continue
            interval = liveness.witness_interval(
                self._public_key, peer.public_key, mesh_size,
                base=self._policy.stale_after / 4, cap=self._policy.reclaim_after / 4,
            )
            if self._duty_at.get(peer.public_key, 0.0) <= now:
                self._duty_at[peer.public_key] = now + interval
                due.append((key, peer, report, interval))
        await _each(due, lambda d: self._witness_one(*d))

    async def _witness_one(self, key: str, peer: Peer, report: str | None, interval: float) -> None:
        assert self._store is not None
        record = ipam.seen_key(key)
        value = records.sighting(self._name, report)
        try:
            cur = await self._store.get(record)
            if cur is not None and cur.created is not None:
                age = self._clock.server() - cur.created.timestamp()
                if age < interval and (report is None or records.sighted_endpoint(cur.value) == report):
                    return  # someone keeps it fresh, and it says what we would say
                await self._store.update(record, value, cur.revision)
            else:
                await self._store.create(record, value)
        except (KeyExistsError, RevisionMismatchError):
            return  # another witness wrote it at the same moment: that is just as good
        except StoreError as e:
            log.debug("writing a witness record failed", extra=fields(key=record, error=e))
            return
        self.witness_writes += 1

    async def sighting_of_us(self, own_key: str) -> str | None:
        """The endpoint other nodes report seeing us at (`seen.<our id>`), if any."""
        assert self._store is not None
        try:
            got = await self._store.get(ipam.seen_key(own_key))
        except StoreError:
            return None
        return records.sighted_endpoint(got.value) if got is not None else None


async def _each(items: Iterable[T], do: Callable[[T], Awaitable[None]]) -> None:
    """Run do(item) for every item, at most PARALLEL at once."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(item: T) -> None:
        async with gate:
            await do(item)

    await asyncio.gather(*(one(i) for i in items))
