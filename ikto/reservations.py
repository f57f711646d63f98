"""Our routed networks' reservations in the bucket, and checking other nodes' (routes.py).

A reservation is `routes.<base64url of the network>` → `{"holder": "peers.<id>", "name": ...}`,
created if absent, exactly as an address is claimed: it names the holder's entry key, so a
key rotation does not touch it. A reservation whose holder is gone (its entry deleted) or
silent for reclaim_after (claim.holder_silence) may be taken over.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterable
from ipaddress import ip_network

from ikto import entry, liveness
from ikto.claim import holder_silence
from ikto.ipam import Network
from ikto.log import fields
from ikto.models import Peer
from ikto.routes import KEY_PREFIX, Announced, Decision, decide, overlaps, route_key
from ikto.store import Entry, KeyExistsError, RevisionMismatchError, Store, StoreError

log = logging.getLogger("ikto.agent")


def _holder(value: bytes | None) -> str | None:
    return entry.string_field(value, "holder")


class Reservations:
    """Owns what we reserved, what we were refused, and what we know of others' reservations."""

    def __init__(self, name: str, reclaim_after: float) -> None:
        self._name = name
        self._reclaim_after = reclaim_after
        self._store: Store | None = None
        self.held: dict[Network, int] = {}  # ours: network -> reservation revision
        self.refused: dict[Network, str] = {}  # ours that we may not announce, and why
        self._known: dict[tuple[str, Network], tuple[bool, int]] = {}  # (reserved, revision)
        self.decision = Decision({}, {})

    def attach(self, store: Store) -> None:
        self._store = store

    async def reserve(self, routes: Iterable[Network], our_key: str) -> tuple[Network, ...]:
        """Reserve our routed networks; the ones we may announce (refusals are logged once)."""
        assert self._store is not None
        wanted = list(routes)
        if not wanted:
            return ()
        others = [e for e in await self._store.latest(KEY_PREFIX + "*") if _holder(e.value) != our_key]
        for net in wanted:
            try:
                why = await self._reserve_one(net, our_key, others)
            except StoreError as e:
                why = f"could not reserve it: {e}"
            if why is None:
                self.refused.pop(net, None)
            elif self.refused.get(net) != why:
                self.refused[net] = why
                log.error("not announcing a routed network", extra=fields(network=str(net), reason=why))
        return tuple(n for n in wanted if n in self.held and n not in self.refused)

    async def _reserve_one(self, net: Network, our_key: str, others: list[Entry]) -> str | None:
        assert self._store is not None
        for other in others:
            other_net = _network_of_key(other.key)
            if other_net is not None and other_net != net and overlaps(net, other_net):
                return f"overlaps {other_net}, reserved by {_holder(other.value)}"
        key = route_key(net)
        value = json.dumps({"holder": our_key, "name": self._name}).encode()
        for _ in range(4):
            try:
                self.held[net] = await self._store.create(key, value)
                return None
            except KeyExistsError:
                pass
            cur = await self._store.get(key)
            if cur is None:
                continue
            holder = _holder(cur.value)
            if holder != our_key:
                entry = await self._store.get(holder) if holder else None
                silent = await holder_silence(self._store, entry) if entry is not None else None
                if entry is not None and not liveness.reclaimable(silent, self._reclaim_after):
                    return f"reserved by {holder}"
                log.warning("taking over a routed network from a node that is gone",
                            extra=fields(network=str(net), holder=holder))
            try:
                self.held[net] = await self._store.update(key, value, cur.revision)
                return None
            except RevisionMismatchError:
                continue
        return "its reservation kept changing"

    async def release(self) -> None:
        """Give our reservations back (on leave), each only while it is still ours."""
        assert self._store is not None
        for net, revision in list(self.held.items()):
            try:
                await self._store.delete(route_key(net), revision)
            except StoreError as e:
                log.warning("could not release a routed network", extra=fields(network=str(net), error=e))
            self.held.pop(net, None)

    async def refresh(
        self, peers: list[tuple[str, Peer]], mesh: Network, ours: Iterable[Network], our_key: str,
        touched: Iterable[str] | None = (),
    ) -> set[str]:
        """Check the peers' reservations and decide again; the public keys whose networks
        changed. touched: the entry keys that changed (None: a new snapshot, read them all)."""
        before = self.decision
        self.decision = decide(await self.check(peers, touched), mesh, ours, our_key)
        for (key, net), why in self.decision.refused.items():
            if before.refused.get((key, net)) != why:
                log.warning("refusing a routed network", extra=fields(key=key, network=str(net), reason=why))
        by_key = {k: p.public_key for k, p in peers}
        changed = {k for k in set(before.applied) | set(self.decision.applied)
                   if before.applied.get(k) != self.decision.applied.get(k)}
        return {by_key[k] for k in changed if k in by_key}

    def routed_by(self, key: str) -> tuple[Network, ...]:
        """The networks applied for the peer at `key`."""
        return self.decision.applied.get(key, ())

    def kernel_routes(self) -> set[Network]:
        """Every applied network but default routes (an exit node's: we never route our own
        traffic through a peer unless told to; docs/routes.md)."""
        return {n for nets in self.decision.applied.values() for n in nets if n.prefixlen > 0}

    async def check(
        self, peers: Iterable[tuple[str, Peer]], touched: Iterable[str] | None = ()
    ) -> list[Announced]:
        """Every network the peers announce, with whether its reservation names its announcer.

        A reservation changes hands only with an announcement (the new holder announces it),
        so it is read again only for a changed entry, and for the networks that overlap what a
        changed entry announces; all of them in one read after a snapshot (touched None), and
        any we could not read yet. Never on a timer: that would be every node reading every
        reservation (N x R reads).
        """
        announced = [(key, net, peer) for key, peer in peers for net in peer.routes]
        present = {(key, net) for key, net, _ in announced}
        self._known = {k: v for k, v in self._known.items() if k in present}
        if touched is None:
            if announced and self._store is not None:
                await self._read_all([(key, net) for key, net, _ in announced])
        else:
            changed = set(touched)
            fresh = [net for key, net, _ in announced if key in changed]
            due = [
                (key, net) for key, net, _ in announced
                if (key, net) not in self._known or key in changed or any(overlaps(net, f) for f in fresh)
            ]
            if due and self._store is not None:
                await asyncio.gather(*(self._read(key, net) for key, net in due))
        out = []
        for key, net, peer in announced:
            reserved, rev = self._known.get((key, net), (False, 0))
            out.append(Announced(net, key, peer.exit, reserved, rev))
        return out

    async def _read(self, key: str, net: Network) -> None:
        assert self._store is not None
        try:
            cur = await self._store.get(route_key(net))
        except StoreError:
            return  # read again at the next checkup
        self._known[(key, net)] = _names(cur, key)

    async def _read_all(self, wanted: list[tuple[str, Network]]) -> None:
        assert self._store is not None
        try:
            held = {e.key: e for e in await self._store.latest(KEY_PREFIX + "*")}
        except StoreError:
            return
        self._known = {}
        for key, net in wanted:
            self._known[(key, net)] = _names(held.get(route_key(net)), key)


def _names(reservation: Entry | None, key: str) -> tuple[bool, int]:
    """Whether a reservation names the entry at key, and its revision."""
    if reservation is None:
        return False, 0
    return _holder(reservation.value) == key, reservation.revision


def _network_of_key(key: str) -> Network | None:
    try:
        return ip_network(base64.urlsafe_b64decode(key.removeprefix(KEY_PREFIX)).decode(), strict=True)
    except ValueError:
        return None
