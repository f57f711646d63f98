"""The agent: wires the parts together and routes the values they produce.

Parts, each owning its state: `Interface` (iface.py) brings WireGuard up; `Membership`
(membership.py) owns our entry; `Follower` (follower.py) owns the mesh and the watch;
`Applier` (applier.py) owns WireGuard's peers; `FileWriter` (filewriter.py) owns the
rendered file. Liveness decisions are the pure functions of liveness.py. Parts report
through one queue of typed values (events.py); `_route` hands each to the part it concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ikto import keys, liveness
from ikto.applier import Applier
from ikto.config import Config
from ikto.desired import Desired
from ikto.entry import MeshSpec
from ikto.errors import UsageError
from ikto.events import (
    Event,
    HeartbeatWritten,
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
from ikto.membership import Membership
from ikto.mesh import Mesh
from ikto.models import Peer
from ikto.retry import retrying
from ikto.store import PermissionDeniedError, Store
from ikto.vitals import Vitals
from ikto.wg import Wg, WgApi

log = logging.getLogger("ikto.agent")

ServeApi = Callable[["Agent"], Awaitable[Callable[[], Awaitable[None]]]]


class Agent:
    """One mesh node: owns the WireGuard interface and our entry in the bucket."""

    def __init__(self, config: Config, config_path: Path | None, *, wg: WgApi | None = None) -> None:
        config.require_agent_fields()
        assert config.private_key_path is not None
        self.config_path = config_path
        self.wg: WgApi = wg or Wg(config.wg_dev_name)
        self._private_key = keys.read_private_key(config.private_key_path)
        # From `wg pubkey`, not ikto.keys: the agent then never loads cryptography (6.5 MiB).
        self.public_key = self.wg.public_key(self._private_key)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        emit = self._events.put_nowait
        self.membership = Membership(config, config_path, self.public_key, emit)
        self.follower = Follower(self._spec(), emit)
        self.iface = Interface(config, self._private_key, self.public_key, self.wg)
        desired = Desired(lambda: self.mesh, lambda: self.config, self.public_key, self._private_key)
        self.writer = FileWriter(lambda: self.config.wg_config_path, desired.prepare_file)
        self.applier = Applier(
            self.wg, desired.wanted, desired.syncconf_text, self.iface.ensure, self.writer.changed
        )
        policy = liveness.Policy(config.stale_after, config.remove_after, config.reclaim_after)
        self.vitals = Vitals(policy, lambda: self.mesh, lambda: self.follower.grace_floor)
        self.store: Store | None = None
        self.started = time.time()
        self._stop = asyncio.Event()

    @property
    def config(self) -> Config:
        return self.membership.config  # our subnet can move: the membership owns the config

    @property
    def self_peer(self) -> Peer:
        return self.membership.peer

    @property
    def mesh(self) -> Mesh:
        return self.follower.mesh

    def _spec(self) -> MeshSpec:
        c = self.config
        return MeshSpec(c.mesh_cidr, c.subnet_prefix, self.public_key, self.membership.key)

    async def run(self, serve_api: ServeApi | None = None) -> int:
        """Run until SIGTERM/SIGINT or `leave`; the interface and peers stay in place."""
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
            self.membership.attach(self.store)
            self.follower.attach(self.store)
            claimed = await retrying("claiming our address failed; retrying", self._claim, self._stop,
                                     final=(UsageError, PermissionDeniedError))
            if not claimed:
                return 0
            self.follower.moved(self._spec())
            tasks = [asyncio.create_task(coro, name=name) for name, coro in (
                ("watch", self.follower.run()), ("heartbeat", self.membership.run()),
                ("apply", self.applier.run()), ("tick", self._tick()), ("route", self._route()),
            )]
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and (exc := t.exception()) is not None:
                    raise exc
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

    def stop(self) -> None:
        """Ask the agent to stop (signal handler)."""
        self._stop.set()

    async def leave(self, down: bool) -> None:
        """Remove our entry from the bucket (with its revision), optionally the interface, then stop."""
        await self.membership.leave()
        if down:
            await asyncio.to_thread(self.wg.down, self.config.wg_config_path)
            log.info("interface removed", extra=fields(dev=self.config.wg_dev_name))
        self._stop.set()

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
        await self.membership.claim()
        return True

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
                    self.applier.ready = True
                    self.applier.hold_removals(3 * self.config.heartbeat_interval)
                    await self.applier.full_reconcile()
                case PeersChanged(public_keys=touched):
                    self.applier.mark(touched)
                case OwnEntrySeen(value=value, revision=revision):
                    self.membership.seen(value, revision)
                case HeartbeatWritten(revision=revision):
                    self.follower.expect(revision)
                case Moved(config=config):
                    self.iface.moved(config)
                    await asyncio.to_thread(self.iface.bring_up)
                    self.follower.moved(self._spec())
                    await self.writer.write()
                case RebuildWatch(reason=reason):
                    self.follower.rebuild(reason)
                case Reconnected():
                    log.info("reconnected to NATS; re-reading the bucket and re-asserting our entry")
                    self.follower.rebuild("reconnected to NATS")
                    self.membership.poke()
                case Tick():
                    if self.store is not None and self.store.connected and not self.membership.leaving:
                        await self.follower.check()
                        if self.follower.snapshot_done:
                            self.applier.mark(self.vitals.expire())
