"""Applying the mesh to WireGuard: batches of touched peers, a periodic full comparison with
`wg show dump`, and the removal hold after a snapshot. The only part that changes peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping

from ikto.ipam import Network
from ikto.log import fields
from ikto.metrics import Latency
from ikto.models import PeerWant, Plan, WgDevice, WgPeer
from ikto.reconcile import applied, diff
from ikto.wg import WgApi, WgError

log = logging.getLogger("ikto.agent")

# Above this many changes one `wg syncconf` of the whole mesh beats `wg set` batches
# (cold start: wireguard-go does the diffing itself, in one call).
SYNCCONF_THRESHOLD = 2000
RESYNC_SECONDS = 60.0  # full comparison with `wg show dump` at most this far apart (± 20 %)
BURST_WINDOW = 0.05  # an apply that follows another within this window waits…
BURST_WAIT = 0.005  # …this long, so a storm is applied in few `wg` calls
LOG_EACH_UP_TO = 50  # plans larger than this log one summary line
_VERB = {"add": "peer joined", "change": "peer changed", "remove": "peer left"}

Wanted = Callable[[Iterable[str] | None], Mapping[str, PeerWant]]


class Applier:
    """Owns WireGuard's peers as last observed, the pending changes and the apply counters.

    `wanted(keys)` gives the desired state of those public keys (all known ones for None);
    `syncconf_text()` the whole mesh in wg(8) format; `ensure_interface()` (blocking) brings
    the interface back if it is gone; `on_observed(dev, taken)` is told every look at WireGuard
    (taken: when it was read, monotonic and wall time) before it is compared (liveness and
    endpoint decisions are taken from it); `on_applied()` after every successful apply;
    `interval()` says when to look again.
    """

    def __init__(
        self,
        wg: WgApi,
        wanted: Wanted,
        syncconf_text: Callable[[], str],
        ensure_interface: Callable[[], object],
        on_observed: Callable[[WgDevice, tuple[float, float]], None],
        on_applied: Callable[[], None],
        interval: Callable[[], float],
        routes: Callable[[], set[Network]] = set,
    ) -> None:
        self._wg = wg
        self._wanted = wanted
        self._syncconf_text = syncconf_text
        self._ensure_interface = ensure_interface
        self._on_observed = on_observed
        self._on_applied = on_applied
        self._interval = interval
        self._routes = routes
        self.device: WgDevice | None = None  # the last look at WireGuard
        self.observed: dict[str, WgPeer] = {}
        self.wg_calls = 0
        self.apply_errors = 0
        self.latency = Latency()  # of each wg call that changed peers
        self.last_full_reconcile: float | None = None  # wall clock
        self.ready = False  # full comparisons start after the first snapshot
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._resync = asyncio.Event()
        self._hold_until = 0.0  # loop time

    def mark(self, public_keys: Iterable[str]) -> None:
        """These peers may need a change: compare and apply them soon, in one batch."""
        self._dirty.update(public_keys)
        if self._dirty:
            self._wake.set()

    def resync_soon(self) -> None:
        """Run a full comparison shortly (after an error, or when a hold ends)."""
        self._resync.set()

    def hold_removals(self, seconds: float) -> None:
        """Full comparisons may add and change but not remove for this long; then one runs.

        A fresh snapshot can be short of entries (a wiped bucket whose nodes have not
        re-asserted yet; a cluster replica that is behind right after a leader change), and
        live nodes write within a heartbeat, so only the ones really gone get removed. A
        delete the watch delivers is authoritative and applies at once.
        """
        loop = asyncio.get_running_loop()
        self._hold_until = loop.time() + seconds
        loop.call_at(self._hold_until + 0.5, self._resync.set)

    async def run(self) -> None:
        """Apply marked peers in batches, and compare everything about every minute."""
        await asyncio.gather(self._apply_loop(), self._resync_loop())

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_end = 0.0
        while True:
            await self._wake.wait()
            if loop.time() - last_end < BURST_WINDOW:
                await asyncio.sleep(BURST_WAIT)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            await self._apply(dirty)
            last_end = loop.time()

    async def _resync_loop(self) -> None:
        while True:
            delay = self._interval() * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), delay)
                await asyncio.sleep(1.0)  # let a burst of repairs settle
            self._resync.clear()
            if self.ready:
                await self.full_reconcile()

    async def full_reconcile(self) -> None:
        """Look at `wg show dump`, learn from it, compare the whole mesh and repair any drift."""
        try:
            await asyncio.to_thread(self._ensure_interface)
            dev = await asyncio.to_thread(self._wg.dump)
            # As read: what follows (the lock) may wait. Not before the call: a process frozen
            # in between (SIGSTOP) would date fresh bytes from before its freeze.
            taken = (time.monotonic(), time.time())
        except WgError as e:
            log.error("reading WireGuard failed", extra=fields(error=e))
            return
        async with self._lock:
            self.device = dev
            self.observed = dict(dev.peers)
            self._on_observed(dev, taken)
        self._dirty.clear()
        await self._apply(None)
        await self.sync_routes()
        self.last_full_reconcile = time.time()

    async def sync_routes(self) -> None:
        """Route the networks peers carry for us through the interface, and no others."""
        wanted = self._routes()
        try:
            have = set(await asyncio.to_thread(self._wg.routes))
            for net in sorted(wanted - have, key=str):
                await asyncio.to_thread(self._wg.add_route, net)
                log.info("routing a network through the mesh", extra=fields(network=str(net)))
            for net in sorted(have - wanted, key=str):
                await asyncio.to_thread(self._wg.del_route, net)
                log.info("no longer routing a network through the mesh", extra=fields(network=str(net)))
        except WgError as e:
            log.error("changing routes failed", extra=fields(error=e))

    async def _apply(self, public_keys: set[str] | None) -> None:
        """Apply the difference for these peers (or all) in one `wg` call."""
        async with self._lock:
            plan = diff(self._wanted(public_keys), self.observed, public_keys)
            if public_keys is None and plan.remove and asyncio.get_running_loop().time() < self._hold_until:
                plan = plan.without_removals()
            if not plan:
                return
            t0 = time.perf_counter()
            try:
                if len(plan) > SYNCCONF_THRESHOLD:
                    await asyncio.to_thread(self._wg.syncconf, self._syncconf_text())
                else:
                    await asyncio.to_thread(self._wg.apply, plan)
            except WgError as e:
                self.apply_errors += 1
                log.error("applying peers failed; will retry with a full resync", extra=fields(error=e))
                self._resync.set()
                return
            self.wg_calls += 1
            took = time.perf_counter() - t0
            self.latency.observe(took)
            _log_plan(plan, took * 1000)
            applied(plan, self.observed)
            self._on_applied()


LOOK_SECONDS = 5.0  # between two looks at WireGuard in a small mesh


def look_interval(peers: int, heartbeat_interval: float, trying: bool) -> float:
    """Seconds between two looks at `wg show dump` (each also a full comparison): every 5 s (or
    heartbeat) in a small mesh, every second while endpoints are being tried — but a look at
    10,000 peers costs ~110 ms (docs/facts.md), so at most ~1 % of the time, and at least
    every RESYNC_SECONDS."""
    cost = peers / 1000 * 0.11
    if trying:
        return max(1.0, cost * 20)
    return min(RESYNC_SECONDS, max(min(LOOK_SECONDS, heartbeat_interval), cost * 100))


def _log_plan(plan: Plan, ms: float) -> None:
    if len(plan) > LOG_EACH_UP_TO:
        log.info("applied peers", extra=fields(set=len(plan.set), removed=len(plan.remove), ms=round(ms, 1)))
        return
    for c in plan.changes:
        new = c.new
        log.info(
            _VERB[c.kind],
            extra=fields(
                name=c.name, public_key=c.public_key,
                allowed_ip=",".join(new.allowed_ips) if new else None,
                endpoint=new.endpoint if new else None, why=c.why, ms=round(ms, 1),
            ),
        )
