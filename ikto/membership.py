"""Our own entry in the bucket: claimed at start, checked now and then, put back when it is
lost, moved when another node holds our address, rewritten when our candidate endpoints
change, removed when we leave. It is never rewritten just to say we are alive: that would
make every node hear every node (docs/liveness.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path

from ikto import entry, ipam
from ikto.claim import claim
from ikto.config import Config
from ikto.errors import IktoError
from ikto.events import EntryChecked, Event, Moved, RebuildWatch
from ikto.files import write_atomic
from ikto.ipam import Address, Interface, Network
from ikto.log import fields
from ikto.models import Peer
from ikto.paths import Sighting, our_candidates
from ikto.store import BucketNotFoundError, KeyExistsError, RevisionMismatchError, Store, StoreError
from ikto.wg import WgError

log = logging.getLogger("ikto.agent")

CHECKS_PER_SECOND = 50.0  # the whole mesh's self-checks together, about (docs/benchmarks.md, P6)
MIN_REWRITE_GAP = 10.0  # seconds between rewrites for new candidate endpoints
LOCAL_ADDRESSES_EVERY = 600.0  # seconds between two looks at this host's addresses


class Removal(StrEnum):
    REMOVED = "removed"
    ABSENT = "absent"  # nothing there
    NOT_OURS = "not ours"  # another node holds the key now: left alone


async def remove_entry(store: Store, key: str, public_key: str, revision: int | None) -> Removal:
    """Delete our entry only while it is ours: with its revision, re-read when that moved.

    Used by the agent's leave and by `ikto leave -c` alike.
    """
    for _ in range(3):
        if revision is None:
            cur = await store.get(key)
            if cur is None:
                return Removal.ABSENT
            if entry.owner(cur.value) != public_key:
                return Removal.NOT_OURS
            revision = cur.revision
        try:
            await store.delete(key, revision)
            return Removal.REMOVED
        except RevisionMismatchError:
            revision = None  # another writer moved it: read it again
    raise IktoError(f"could not remove our entry {key}: it kept changing; try again")


def selfcheck_interval(heartbeat_interval: float, mesh_size: int) -> float:
    """Seconds between two reads of our own entry: heartbeat_interval, stretched so that the
    whole mesh makes about CHECKS_PER_SECOND of them (20 s at 1,000 nodes, 200 s at 10,000)."""
    return max(heartbeat_interval, mesh_size / CHECKS_PER_SECOND)


class Membership:
    """Owns our entry: its peer value, its revision, and the one writer lock."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        public_key: str,
        emit: Callable[[Event], None],
        mesh_size: Callable[[], int],
        host_addresses: Callable[[], list[Interface]],
    ) -> None:
        assert config.advertise_address is not None
        self.config = config
        self._config_path = config_path
        self.public_key = public_key
        # `endpoints` is always written (even empty): it tells others we write presence.
        self.peer = Peer(config.name, public_key, config.advertise_address, config.subnet, config.wg_port, ())
        self.revision = 0
        self.leaving = False
        self._emit = emit
        self._mesh_size = mesh_size
        self._store: Store | None = None
        self._lock = asyncio.Lock()  # one writer of our entry at a time: checks, rewrites, leave
        self._poke = asyncio.Event()
        self._rewritten_at = 0.0
        self._host_addresses = host_addresses
        self._local: list[Address] = []  # this host's addresses, looked at now and then
        self._local_at: float | None = None  # loop time
        self._sighting = Sighting()  # where other nodes see us
        self._new_key: str | None = None  # while our entry is rewritten with a new public key

    @property
    def key(self) -> str:
        return ipam.peer_key(self.peer.allowed_ip)

    def attach(self, store: Store) -> None:
        self._store = store

    def poke(self) -> None:
        """Check our entry now (the watch showed it deleted or overwritten, or we reconnected)."""
        self._poke.set()

    def seen(self, value: bytes | None, revision: int) -> None:
        """The watch delivered our key."""
        if self.leaving or not self.revision:  # not claimed yet: the claim settles it
            return
        if value is None:
            log.warning("our entry was deleted; putting it back", extra=fields(key=self.key))
            self.poke()
        elif entry.owner(value) in (self.public_key, self._new_key):
            self.revision = max(self.revision, revision)
        else:
            log.error("our address was overwritten by another node's entry",
                      extra=fields(key=self.key, revision=revision))
            self.poke()

    async def claim(self) -> None:
        """Write our entry (moving if our address is taken); StoreError if NATS fails."""
        assert self._store is not None
        c = self.config
        peer, rev = await claim(
            self._store, self.peer, mesh=c.mesh_cidr, prefix=c.subnet_prefix,
            pinned=c.address_pinned, reclaim_after=c.reclaim_after,
        )
        moved = peer.allowed_ip != self.peer.allowed_ip
        if moved:
            self._persist(peer)
        self.peer, self.revision = peer, rev
        log.info("claimed address", extra=fields(allowed_ip=str(peer.allowed_ip), revision=rev, key=self.key))
        if moved:
            self._emit(Moved(peer, self.config))

    def _persist(self, peer: Peer) -> None:
        """Save the address we moved to in the config file, so a restart keeps it."""
        log.warning("address taken; moved to a new one",
                    extra=fields(old=str(self.peer.allowed_ip), new=str(peer.allowed_ip)))
        if self._config_path is not None:
            data = json.loads(self._config_path.read_text(encoding="utf-8"))
            data["private_address"] = str(peer.allowed_ip.network_address)
            write_atomic(self._config_path, json.dumps(data, indent=2) + "\n")
        self.config = self.config.model_copy(update={"private_address": peer.allowed_ip.network_address})

    async def run(self) -> None:
        """Check our entry every selfcheck_interval (± 20 %), or at once when poked."""
        while True:
            delay = selfcheck_interval(self.config.heartbeat_interval, self._mesh_size())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), delay * random.uniform(0.8, 1.2))
            self._poke.clear()
            if self._store is not None and self._store.connected and not self.leaving:
                await self.check()

    async def check(self) -> None:
        """Read our entry: put it back if it is missing or stale, move if another node holds it.

        The store can lose acknowledged writes, a bucket can be restored from an older
        snapshot, and anyone with rights may delete the key: this is how it comes back.
        """
        async with self._lock:
            if self.leaving:  # a leave that won the lock has removed the entry for good
                return
            try:
                await self._check()
            except BucketNotFoundError as e:
                log.warning("checking our entry failed: the bucket is gone",
                            extra=fields(key=self.key, error=e))
                await self._reopen_bucket()
            except StoreError as e:
                log.warning("checking our entry failed", extra=fields(key=self.key, error=e))

    async def _check(self) -> None:
        assert self._store is not None
        store, key, value = self._store, self.key, entry.encode(self.peer)
        cur = await store.get(key)
        if cur is None:
            log.warning("our entry was missing; putting it back", extra=fields(key=key))
            with contextlib.suppress(KeyExistsError):  # written meanwhile: the next check sees it
                self.revision = await store.create(key, value)
            self._emit(EntryChecked(self.revision, anomaly=True))
            return
        mine = entry.owner(cur.value) == self.public_key
        if mine or self.config.address_pinned:
            if not mine:
                log.error("another node wrote our pinned address; putting ours back",
                          extra=fields(key=key, revision=cur.revision))
            went_back = mine and cur.revision < self.revision  # restored from an older snapshot?
            if cur.value != value:
                self.revision = await store.update(key, value, cur.revision)
                self._rewritten_at = asyncio.get_running_loop().time()
            else:
                self.revision = cur.revision
            self._emit(EntryChecked(cur.revision, anomaly=went_back or not mine))
            return
        # Another node holds our key: it reclaimed the address while we were silent (or
        # someone wrote it by hand). Fighting over it would flap both nodes; we move instead.
        log.error("our address is now held by another node; moving to a new one",
                  extra=fields(key=key, revision=cur.revision))
        await self.claim()
        self._emit(RebuildWatch("we moved to a new address"))

    async def refresh_endpoints(self, sighted: str | None) -> None:
        """Publish our candidate endpoints if they changed: where others see us (`sighted`, a
        witness report; paths.Sighting says what is kept of it), where the NATS server sees us,
        and this host's addresses."""
        assert self._store is not None and self.config.advertise_address is not None
        now = asyncio.get_running_loop().time()
        if self._local_at is None or now - self._local_at >= LOCAL_ADDRESSES_EVERY:
            self._local_at = now
            with contextlib.suppress(WgError):
                self._local = [a.ip for a in await asyncio.to_thread(self._host_addresses)]
        was = self._sighting.symmetric
        seen = self._sighting.update(sighted, self._store.client_ip)
        if self._sighting.symmetric and self._sighting.symmetric != was:
            log.warning(
                "our NAT gives each peer its own port (a symmetric NAT): nodes behind NATs cannot "
                "reach us directly; forward the WireGuard port to this host to change that",
                extra=fields(public_address=self._sighting.symmetric, port=self.config.wg_port),
            )
        c = self.config
        await self.publish(our_candidates(
            sighted=seen, nats_sees=self._store.client_ip, local=self._local,
            port=c.wg_port, advertise=self.peer.advertise_address, mesh=c.mesh_cidr,
        ))

    async def rekey(self, public_key: str) -> None:
        """Our key is being replaced: write the new public key into our entry (compare-and-set;
        only over our own entry, old key or new)."""
        assert self._store is not None
        old = self.public_key
        async with self._lock:
            cur = await self._store.get(self.key)
            if cur is None or entry.owner(cur.value) not in (old, public_key):
                raise IktoError(f"our entry {self.key} is not ours any more: not rotating the key")
            peer = replace(self.peer, public_key=public_key)
            self._new_key = public_key  # the watch may show it before the update returns
            try:
                self.revision = await self._store.update(self.key, entry.encode(peer), cur.revision)
                self.peer, self.public_key = peer, public_key
            finally:
                self._new_key = None

    async def announce(self, routes: tuple[Network, ...], exit_node: bool) -> None:
        """Announce the routed networks we reserved (rewrites our entry if they changed)."""
        if routes == self.peer.routes and exit_node == self.peer.exit:
            return
        self.peer = replace(self.peer, routes=routes, exit=exit_node)
        await self.check()

    async def publish(self, endpoints: tuple[str, ...]) -> None:
        """Our candidate endpoints changed: rewrite our entry with them (at most every
        MIN_REWRITE_GAP seconds; every node hears this write)."""
        if endpoints == self.peer.endpoints or self._store is None or self.leaving:
            return
        if not self.revision:  # not claimed yet: the claim writes them
            self.peer = replace(self.peer, endpoints=endpoints)
            return
        loop = asyncio.get_running_loop()
        wait = self._rewritten_at + MIN_REWRITE_GAP - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        log.info("publishing our candidate endpoints", extra=fields(endpoints=",".join(endpoints) or "-"))
        self.peer = replace(self.peer, endpoints=endpoints)
        await self.check()  # rewrites the entry, compare-and-set on its revision

    async def _reopen_bucket(self) -> None:
        assert self._store is not None
        c = self.config
        with contextlib.suppress(StoreError):
            await self._store.open_bucket(c.nats_kv, create=c.create_bucket, replicas=c.bucket_replicas)
            self._emit(RebuildWatch("the bucket was gone"))

    async def leave(self) -> None:
        """Remove our entry (only while it is ours); nothing is rewritten after that."""
        if self._store is None or not self._store.connected:
            raise IktoError("not connected to NATS: cannot remove our entry now")
        self.leaving = True
        try:
            async with self._lock:  # a check in flight finishes first (it may move our revision)
                outcome = await remove_entry(self._store, self.key, self.public_key, self.revision or None)
        except BaseException:
            self.leaving = False  # a failed leave leaves the node as it was
            raise
        if outcome is Removal.NOT_OURS:
            log.warning("our address is held by another node now; leaving its entry alone",
                        extra=fields(key=self.key))
        log.info("left the mesh", extra=fields(key=self.key, allowed_ip=str(self.peer.allowed_ip)))
