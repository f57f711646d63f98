"""Our presence record, `alive.<id>`: written often only while a peer needs it, else rarely.

Every write is read back once for its server timestamp: that is how the agent knows the
server's clock (docs/liveness.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from ikto import ipam, records
from ikto.clock import Clock
from ikto.log import fields
from ikto.records import Report
from ikto.store import Store, StoreError

log = logging.getLogger("ikto.agent")


class Presence:
    """Owns when our presence record is written, and the mode (often or rarely)."""

    def __init__(
        self, key: Callable[[], str], name: str, clock: Clock, often: float, rarely: float
    ) -> None:
        self._key = key
        self._name = name
        self._clock = clock
        self._often = often
        self._rarely = rarely
        self._store: Store | None = None
        self._needed = False
        self._written_at: float | None = None  # monotonic
        self._wake = asyncio.Event()
        self.writes = 0
        self.failures = 0
        self._report: Report | None = None
        self._written: Report | None = None

    def attach(self, store: Store) -> None:
        self._store = store

    @property
    def needed(self) -> bool:
        return self._needed

    def need(self, often: bool) -> None:
        """Peers need our presence often (or no longer)."""
        if often != self._needed:
            log.info("writing our presence " + ("often: a peer cannot hear us" if often else "rarely again"))
            self._needed = often
            self._wake.set()

    def report(self, report: Report) -> None:
        """Our view of the mesh; written at once when whom we cannot reach changed."""
        self._report = report
        if self._written is None or report.unreachable != self._written.unreachable:
            self._written_at = None  # due now: our first report, or whom we cannot reach changed
            self._wake.set()

    def rewrite(self) -> None:
        """Write it now (we moved, or the bucket came back)."""
        self._written_at = None
        self._wake.set()

    async def run(self) -> None:
        """Write the record whenever it is due."""
        while True:
            interval = self._often if self._needed else self._rarely
            due = 0.0 if self._written_at is None else self._written_at + interval * random.uniform(0.8, 1.0)
            delay = due - self._clock.mono()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                continue
            if self._store is None or not self._store.connected or not await self.write():
                await asyncio.sleep(self._often)  # try again soon

    async def write(self) -> bool:
        """Write our presence record and learn the server's clock from it; False if it failed."""
        assert self._store is not None
        key = ipam.alive_key(self._key())
        try:
            sent = self._clock.wall()
            report = self._report
            revision = await self._store.put(key, records.presence(self._name, report))
            acked = self._clock.wall()
            stamp = await self._store.stamp(revision)
        except StoreError as e:
            log.warning("writing our presence failed", extra=fields(key=key, error=e))
            self.failures += 1
            return False
        self._written_at = self._clock.mono()
        self._written = report
        self.writes += 1
        if stamp is not None:
            self._clock.sample(stamp, sent, acked)
        return True
