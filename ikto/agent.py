"""The agent: wires the parts together and routes the values they produce.

Parts, each owning its state: `Interface` (iface.py) brings WireGuard up; `Follower`
(follower.py) owns the mesh and the watch; `Membership` (membership.py) owns our entry;
`Presence` (presence.py) our presence record; `Applier` (applier.py) WireGuard's peers;
`Vitals` (vitals.py) every peer's signs of life and `Paths` (paths.py) the endpoint to use;
`Prober` (prober.py) the liveness records read and written on demand; `FileWriter`
(filewriter.py) the rendered file. Parts report through one queue of typed values
(events.py); `_route` hands each to the part it concerns. See docs/liveness.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

from ikto import keys, liveness, rotation
from ikto.applier import Applier, look_interval
from ikto.clock import Clock
from ikto.config import Config
from ikto.desired import Desired
from ikto.entry import MeshSpec
from ikto.errors import IktoError, UsageError
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
from ikto.filewriter import FileWriter
from ikto.follower import Follower
from ikto.iface import Interface
from ikto.log import fields
from ikto.membership import Membership, selfcheck_interval
from ikto.mesh import Mesh
from ikto.metrics import Metrics
from ikto.models import Peer, WgDevice
from ikto.paths import Paths
from ikto.presence import Presence
from ikto.prober import Prober
from ikto.records import Report
from ikto.reservations import Reservations
from ikto.retry import retrying
from ikto.store import PermissionDeniedError, Store
from ikto.vitals import Review, Vitals
from ikto.wg import Wg, WgApi

log = logging.getLogger("ikto.agent")

ServeApi = Callable[["Agent"], Awaitable[Callable[[], Awaitable[None]]]]


class Agent:
    """One mesh node: owns the WireGuard interface and our records in the bucket."""

    def __init__(
        self, config: Config, config_path: Path | None, *, wg: WgApi | None = None, clock: Clock | None = None
    ) -> None:
        config.require_agent_fields()
        assert config.private_key_path is not None
        self.config_path = config_path
        self.wg: WgApi = wg or Wg(config.wg_dev_name)
        self.clock = clock or Clock()
        private_key = keys.read_private_key(config.private_key_path)
        # From `wg pubkey`, not ikto.keys: the agent then never loads cryptography (6.5 MiB).
        self.public_key = self.wg.public_key(private_key)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        emit = self._events.put_nowait
        hb = config.heartbeat_interval
        self.membership = Membership(
            config, config_path, self.public_key, emit, lambda: len(self.mesh), self.wg.host_addresses
        )
        self.follower = Follower(self._spec(), emit)
        policy = liveness.Policy(config.stale_after, config.remove_after, config.reclaim_after)
        keepalive = config.persistent_keepalive
        self.vitals = Vitals(
            policy, lambda: self.mesh, self.clock, hb, keepalive, self._look, self.public_key
        )
        self.paths = Paths(self.clock.mono, self.vitals.session_fresh)
        rarely = config.reclaim_after / 4
        self.presence = Presence(lambda: self.membership.key, config.name, self.clock, hb / 2, rarely)
        self.prober = Prober(config.name, self.public_key, self.clock, self.vitals, policy)
        self.iface = Interface(config, private_key, self.public_key, self.wg)
        self.reservations = Reservations(config.name, config.reclaim_after)
        desired = Desired(
            lambda: self.mesh, lambda: self.config, self.paths, self.reservations.routed_by, self.public_key,
            private_key,
        )
        self.writer = FileWriter(lambda: self.config.wg_config_path, desired.prepare_file)
        self.applier = Applier(
            self.wg, desired.wanted, desired.syncconf_text, self.iface.ensure, self._observed,
            self.writer.changed, self._look, self.reservations.kernel_routes,
        )
        self.metrics = Metrics(per_peer=config.metrics_per_peer)
        self.store: Store | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._applied_snapshot = asyncio.Event()
        self.ready = asyncio.Event()  # the mesh is applied and our address claimed
        self.restart = False  # run again with a new key (rotation)
        self.rotator = rotation.Rotator(
            config.private_key_path, lambda: self.config.wg_port, self.wg, self.membership.rekey
        )

    @property
    def config(self) -> Config:
        return self.membership.config  # our subnet can move: the membership owns the config

    @property
    def self_peer(self) -> Peer:
        return self.membership.peer

    @property
    def mesh(self) -> Mesh:
        return self.follower.mesh

    def _look(self) -> float:
        return look_interval(len(self.mesh), self.config.heartbeat_interval, self.paths.trying)

    def _spec(self) -> MeshSpec:
        c = self.config
        return MeshSpec(c.mesh_cidr, c.subnet_prefix, self.public_key, self.membership.key)

    async def run(self, serve_api: ServeApi | None = None) -> int:
        """Run until SIGTERM/SIGINT or `leave`; the interface and peers stay in place.

        Joining is ordered so that when the members learn of us we already hold them: read the
        bucket and apply it to WireGuard first, claim our address after.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        c = self.config
        log.info("starting", extra=fields(name=c.name, dev=c.wg_dev_name, public_key=self.public_key,
                                          address=str(c.interface_address)))
        await asyncio.to_thread(self.iface.bring_up)
        api_cleanup = await serve_api(self) if serve_api else None
        tasks: list[asyncio.Task[None]] = []
        try:
            self.store = await retrying("NATS not ready; the mesh stays as it is", self._connect, self._stop)
            if self.store is None:
                return 0
            for part in (self.membership, self.follower, self.presence, self.prober, self.reservations):
                part.attach(self.store)
            if await self.rotator.recover_at_start(self._read_entry, self.public_key):
                self.restart = True
                return 0
            tasks = [self._task("watch", self.follower.run()), self._task("apply", self.applier.run()),
                     self._task("route", self._route())]
            if not await self._until(self._applied_snapshot.wait()):
                return 0
            wanted = self.membership.key
            claimed = await retrying("claiming our address failed; retrying", self._claim, self._stop,
                                     final=(UsageError, PermissionDeniedError))
            if not claimed:
                return 0
            if self.membership.key != wanted:  # moved: hold the mesh as seen from the new address
                self._applied_snapshot.clear()
                if not await self._until(self._applied_snapshot.wait(), tasks):
                    return 0
            self.ready.set()
            tasks += [self._task("self-check", self.membership.run()),
                      self._task("presence", self.presence.run()), self._task("tick", self._tick())]
            if c.rotate_key_days:
                tasks.append(self._task("rotate", self.rotator.when_old(c.rotate_key_days, self.rotate_key)))
            await self._until(self._stop.wait(), tasks)
            return 0
        finally:
            await self.writer.flush()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.store is not None:
                await self.store.close()
            if api_cleanup is not None:
                await api_cleanup()
            log.info("stopped; interface and peers left in place", extra=fields(dev=self.config.wg_dev_name))

    def _task(self, name: str, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        return asyncio.create_task(coro, name=name)

    async def _until(self, what: Awaitable[object], tasks: list[asyncio.Task[None]] | None = None) -> bool:
        """Wait for `what`; False if stopped first; a part that failed raises its error here."""
        goal = asyncio.ensure_future(what)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait([goal, stop, *(tasks or [])], return_when=asyncio.FIRST_COMPLETED)
        finally:
            goal.cancel()
            stop.cancel()
        for t in done:
            if t not in (goal, stop) and (exc := t.exception()) is not None:
                raise exc
        return goal in done and not self._stop.is_set()

    def stop(self) -> None:
        """Ask the agent to stop (signal handler)."""
        self._stop.set()

    async def rotate_key(self) -> str:
        """Replace our WireGuard key (rotation.py); the new public key. The agent then restarts
        itself, to run with the new key everywhere."""
        if not self.ready.is_set() or self.store is None or not self.store.connected:
            raise IktoError("not ready (joining, or cut off from NATS): cannot rotate the key now")
        public = await self.rotator.rotate()
        log.warning("rotated our key; restarting to use it", extra=fields(public_key=public))
        self.restart = True
        self._stop.set()
        return public

    async def leave(self, down: bool) -> None:
        """Remove our entry from the bucket (with its revision), optionally the interface, then stop."""
        await self.membership.leave()
        await self.reservations.release()
        if down:
            await asyncio.to_thread(self.wg.down, self.config.wg_config_path)
            log.info("interface removed", extra=fields(dev=self.config.wg_dev_name))
        self._stop.set()

    async def _read_entry(self) -> bytes | None:
        assert self.store is not None
        held = await self.store.get(self.membership.key)
        return held.value if held else None

    async def _connect(self) -> Store:
        c = self.config
        store = await Store.connect(
            c, name=f"ikto-agent {c.name}", on_disconnect=self._on_disconnect, on_reconnect=self._on_reconnect
        )
        try:
            await store.open_bucket(c.nats_kv, create=c.create_bucket, replicas=c.bucket_replicas)
        except BaseException:
            await store.close()
            raise
        log.info("connected to NATS", extra=fields(bucket=c.nats_kv))
        return store

    async def _claim(self) -> bool:
        await self.membership.refresh_endpoints(None)
        await self.membership.claim()
        c = self.config
        routes = await self.reservations.reserve(c.routes, self.membership.key)
        await self.membership.announce(routes, c.exit_node and any(r.prefixlen == 0 for r in routes))
        return True

    async def _routes(self, touched: frozenset[str] | None = frozenset()) -> None:
        """Decide again which networks peers route for us (touched: the public keys whose
        entries changed; None: all); apply what changed."""
        mesh, c = self.mesh, self.config
        others = mesh.others()
        keys = None if touched is None else {k for k, p in others if p.public_key in touched}
        changed = await self.reservations.refresh(others, c.mesh_cidr, c.routes, self.membership.key, keys)
        if changed:
            self.applier.mark(changed)
            await self.applier.sync_routes()

    async def _on_disconnect(self) -> None:
        log.warning("disconnected from NATS; WireGuard is left as it is")

    async def _on_reconnect(self) -> None:
        self._events.put_nowait(Reconnected())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval * random.uniform(0.8, 1.2))
            self._events.put_nowait(Tick())

    async def _route(self) -> None:
        """Hand each value a part produced to the part it concerns, in order."""
        while True:
            match await self._events.get():
                case SnapshotLoaded():
                    self.vitals.restart_grace()
                    self.applier.ready = True
                    # Nodes put a lost entry back within one self-check: give them three.
                    hold = 3 * selfcheck_interval(self.config.heartbeat_interval, len(self.mesh))
                    self.applier.hold_removals(hold)
                    await self._routes(None)
                    await self.applier.full_reconcile()
                    self.writer.changed()  # the file may hold an older key or mesh
                    self._applied_snapshot.set()
                case PeersChanged(public_keys=touched):
                    self.applier.mark(touched)
                    if any(p.routes for _, p in self.mesh.others()) or self.reservations.decision.applied:
                        await self._routes(touched)
                case OwnEntrySeen(value=value, revision=revision):
                    self.membership.seen(value, revision)
                case EntryChecked(revision=revision, anomaly=anomaly):
                    self.follower.expect(revision)
                    if anomaly:
                        await self.follower.check()
                case Moved(config=config):
                    self.iface.moved(config)
                    await asyncio.to_thread(self.iface.bring_up)
                    self.follower.moved(self._spec())
                    self.follower.rebuild("we moved to a new address")
                    self.presence.rewrite()
                    await self.writer.write()
                case RebuildWatch(reason=reason):
                    self.follower.rebuild(reason)
                case Reconnected():
                    log.info("reconnected to NATS; re-reading the bucket and checking our entry")
                    self.follower.rebuild("reconnected to NATS")
                    self.membership.poke()
                    await self.membership.refresh_endpoints(None)  # the NAT may map us elsewhere now
                case Tick():
                    if self.store is not None and self.store.connected and not self.membership.leaving:
                        await self._checkup()

    def _observed(self, dev: WgDevice) -> None:
        """A look at WireGuard: learn signs of life, move endpoint trials on, update our report."""
        self.vitals.observe(dev)
        self.applier.mark(self.paths.observed(dev, self.mesh.peers()))
        if self.ready.is_set():
            self._report(self.vitals.review(self.presence.needed))

    async def _checkup(self) -> None:
        """Every heartbeat_interval: read the records liveness needs, decide, and help others."""
        review = self.vitals.review(self.presence.needed)
        await self.prober.probe(review.probe)
        self.presence.need(review.presence_needed)
        self._report(review)
        if self.follower.snapshot_done:
            self.applier.mark(self.vitals.expire())
        if (dev := self.applier.device) is not None:
            await self.prober.witness(dev, self.mesh.others(), len(self.mesh))
        await self._routes()
        if review.presence_needed:  # somebody cannot reach us: where do others see us?
            await self.membership.refresh_endpoints(await self.prober.sighting_of_us(self.membership.key))

    def _report(self, review: Review) -> None:
        self.presence.report(Report(
            self.follower.revision, len(self.mesh.peers()), review.in_wireguard, review.handshaking,
            review.unreachable,
        ))
