"""Following the bucket: a snapshot into a fresh Mesh, then every change; rebuilt from a new
snapshot when asked (reconnect, move) or when the watch is found stalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from ikto.entry import MeshSpec
from ikto.events import Event, OwnEntrySeen, PeersChanged, SnapshotLoaded
from ikto.log import fields
from ikto.mesh import Mesh
from ikto.store import ConsumerLimitError, Entry, Store, StoreError

log = logging.getLogger("ikto.agent")

PATTERN = "peers.*"
REFUSED_WAIT = 5.0  # seconds before asking again for a watch the bucket refused…
REFUSED_MAX_WAIT = 60.0  # …doubling up to this


class Follower:
    """Owns the mesh as the bucket describes it, and the watch that keeps it current."""

    def __init__(self, spec: MeshSpec, emit: Callable[[Event], None]) -> None:
        self.spec = spec
        self.mesh = Mesh(spec)
        self.snapshot_done = False
        self.watch_error: str | None = None  # why the watch cannot run (for /v1/health)
        self._emit = emit
        self._store: Store | None = None
        self._rebuild = asyncio.Event()
        self._reason = ""
        # Stall detection: the identity of the stream this watch follows, the newest revision
        # it delivered, and the revision a read of our own entry found (it must deliver it).
        self._live = False
        self._ident: str | None = None
        self._max_rev = 0
        self._expected = 0
        self._behind = 0  # consecutive checks that saw the bucket behind the watch
        self._refused = 0.0  # current wait after a refused watch
        self.rebuilds: dict[str, int] = {}  # by reason, for metrics

    def attach(self, store: Store) -> None:
        self._store = store

    def moved(self, spec: MeshSpec) -> None:
        """We hold another key now: the next snapshot is read with this spec."""
        self.spec = spec

    def rebuild(self, reason: str) -> None:
        """Read the bucket again from a fresh snapshot."""
        self._reason = reason
        self._rebuild.set()

    @property
    def revision(self) -> int:
        """The newest bucket revision the watch delivered."""
        return self._max_rev

    def expect(self, revision: int) -> None:
        """A read of our entry found this revision: the watch must have delivered it by the
        next read (nats-py's watch can go silent without a word: docs/facts.md)."""
        if self._live and self._expected > self._max_rev:
            self.rebuild("the watch stopped delivering (our own entry's revision never arrived)")
        self._expected = revision

    async def run(self) -> None:
        """Run the watch; rebuild it from a fresh snapshot when asked."""
        while True:
            self._rebuild.clear()
            inner = asyncio.create_task(self._watch_once())
            rebuild = asyncio.create_task(self._rebuild.wait())
            try:
                done, _ = await asyncio.wait([inner, rebuild], return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when we are cancelled: the watch must not outlive us
                rebuild.cancel()
                if not inner.done():
                    inner.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await inner
            if inner in done and not inner.cancelled():
                exc = inner.exception()
                if exc is not None and not isinstance(exc, StoreError):
                    raise exc
                await self._pause_after(exc)
                continue
            log.warning("rebuilding the watch from a fresh snapshot", extra=fields(reason=self._reason))
            self.rebuilds[self._reason] = self.rebuilds.get(self._reason, 0) + 1

    async def _watch_once(self) -> None:
        """Read a snapshot into a new Mesh, hand it over whole, then follow the changes."""
        assert self._store is not None
        mesh = Mesh(self.spec)
        self._live = False
        self._max_rev = 0
        with contextlib.suppress(StoreError):
            self._ident, _ = await self._store.stream_info()
        async with contextlib.aclosing(self._store.watch(PATTERN)) as entries:
            await self._follow(mesh, entries)

    async def _follow(self, mesh: Mesh, entries: AsyncIterator[Entry | None]) -> None:
        self_key = mesh.spec.self_key
        async for e in entries:
            if e is None:
                if not self._live:
                    self._snapshot_loaded(mesh)
                continue
            self._max_rev = max(self._max_rev, e.revision)
            if e.operation == "PUT" and e.value is not None:
                touched, rej = mesh.put(e.key, e.value, e.revision, e.created)
                if rej is not None and e.key != self_key:
                    log.warning(
                        "rejected entry", extra=fields(key=e.key, revision=e.revision, reason=rej.reason)
                    )
                if e.key == self_key:
                    self._emit(OwnEntrySeen(e.value, e.revision))
            else:
                touched = mesh.delete(e.key, e.created)
                if e.key == self_key and self._live:
                    self._emit(OwnEntrySeen(None, e.revision))
            touched.discard(self.spec.self_public_key)
            if touched and self._live:
                self._emit(PeersChanged(frozenset(touched)))

    async def _pause_after(self, exc: BaseException | None) -> None:
        if isinstance(exc, ConsumerLimitError):
            if self.watch_error is None:
                log.error("the bucket refuses our watch", extra=fields(error=exc))
            self.watch_error = str(exc)
            self._refused = min(self._refused * 2, REFUSED_MAX_WAIT) if self._refused else REFUSED_WAIT
            await asyncio.sleep(self._refused)
            return
        log.warning("the watch ended; starting it again", extra=fields(error=exc))
        await asyncio.sleep(1.0)

    def _snapshot_loaded(self, mesh: Mesh) -> None:
        self.watch_error, self._refused = None, 0.0
        self._live = True
        old = self.mesh
        # Peers already out of WireGuard stay out until they write again: a rebuild must not
        # hand a dead node a fresh grace (and bring it back).
        mesh.expired = {
            k for k in old.expired if k in mesh.entries and mesh.revision_of(k) == old.revision_of(k)
        }
        self.mesh = mesh
        self.snapshot_done = True
        log.info("bucket snapshot loaded", extra=fields(entries=len(mesh), rejected=len(mesh.rejected)))
        self._emit(SnapshotLoaded(mesh))

    async def check(self) -> None:
        """Look at the bucket itself (called when a read of our entry found something wrong):
        nats-py's watch never delivers again after the bucket is deleted and recreated or
        restored from an older snapshot."""
        if self._store is None or not self._store.connected:
            return
        try:
            ident, last = await self._store.stream_info()
        except StoreError:
            return
        if self._ident is not None and ident != self._ident:
            self.rebuild("the bucket was recreated")
        elif last < self._max_rev:
            # Confirm on the next check: in a cluster a lagging replica can answer stream info.
            self._behind += 1
            if self._behind >= 2:
                self.rebuild("the bucket went back in time (restored from an older snapshot?)")
        if last >= self._max_rev:
            self._behind = 0
        self._ident = ident
