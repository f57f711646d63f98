"""The agent: builds the parts, joins the mesh (joining.py), runs the parts until stopped.

Parts, each owning its state: `Interface` (iface.py) brings WireGuard up; `Follower`
(follower.py) owns the mesh and the watch; `Membership` (membership.py) our entry; `Presence`
(presence.py) our presence record; `Applier` (applier.py) WireGuard's peers; `Vitals`
(vitals.py) every peer's signs of life and `Paths` (paths.py) the endpoint to use; `Prober`
(prober.py) the liveness records read and written on demand; `Reservations` (reservations.py)
routed networks; `FileWriter` (filewriter.py) the rendered file. Parts report through one queue
of typed values (events.py) that `Dispatch` (dispatch.py) hands to the part each concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ikto import joining, keys, liveness, rotation
from ikto.applier import Applier, look_interval
from ikto.clock import Clock
from ikto.config import Config
from ikto.desired import Desired
from ikto.dispatch import Dispatch
from ikto.entry import MeshSpec
from ikto.errors import IktoError, UsageError
from ikto.events import Reconnected
from ikto.filewriter import FileWriter
from ikto.follower import Follower
from ikto.iface import Interface
from ikto.log import fields
from ikto.membership import Membership
from ikto.mesh import Mesh
from ikto.metrics import Metrics
from ikto.models import Peer
from ikto.paths import Paths
from ikto.presence import Presence
from ikto.prober import Prober
from ikto.reservations import Reservations
from ikto.retry import retrying, until
from ikto.store import PermissionDeniedError, Store
from ikto.vitals import Vitals
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
        self.dispatch = Dispatch(self)
        emit, hb = self.dispatch.emit, config.heartbeat_interval
        self.membership = Membership(
            config, config_path, self.public_key, emit, lambda: len(self.mesh), self.wg.host_addresses
        )
        self.follower = Follower(self.spec(), emit)
        policy = liveness.Policy(config.stale_after, config.remove_after, config.reclaim_after)
        ka = config.persistent_keepalive
        self.vitals = Vitals(policy, lambda: self.mesh, self.clock, hb, ka, self._look, self.public_key)
        self.paths = Paths(self.clock.mono, self.vitals.session_fresh, self.vitals.past_rhythm)
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
            self.wg, desired.wanted, desired.syncconf_text, self.iface.ensure, self.dispatch.observed,
            self.writer.changed, self._look, self.reservations.kernel_routes,
        )
        self.rotator = rotation.Rotator(
            config.private_key_path, lambda: self.config.wg_port, self.wg, self.membership.rekey
        )
        self.metrics = Metrics(per_peer=config.metrics_per_peer)
        self.store: Store | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # the mesh is applied and our address claimed
        self.restart = False  # run again with a new key (rotation)

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

    def spec(self) -> MeshSpec:
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
            if await self._join(tasks):
                self.ready.set()
                run = [self.membership.run(), self.presence.run(), self.dispatch.ticks()]
                if c.rotate_key_days:
                    run.append(self.rotator.when_old(c.rotate_key_days, self.rotate_key))
                tasks += [asyncio.create_task(coro) for coro in run]
                await until(self._stop.wait(), self._stop, tasks)
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

    async def _join(self, tasks: list[asyncio.Task[None]]) -> bool:
        """The steps of joining.py; False if stopped (or restarting) before the end."""
        self.store = await retrying(
            "NATS not ready; the mesh stays as it is",
            lambda: joining.connect(self.config, self._on_disconnect, self._on_reconnect), self._stop,
        )
        if self.store is None:
            return False
        for part in (self.membership, self.follower, self.presence, self.prober, self.reservations):
            part.attach(self.store)
        if await self.rotator.recover_at_start(
            joining.entry_reader(self.store, lambda: self.membership.key), self.public_key
        ):
            self.restart = True
            return False
        d = self.dispatch
        tasks += [asyncio.create_task(c) for c in (self.follower.run(), self.applier.run(), d.run())]
        if not await until(d.snapshot_applied.wait(), self._stop, tasks):
            return False
        wanted = self.membership.key
        claimed = await retrying("claiming our address failed; retrying",
                                 lambda: joining.claim(self.membership, self.reservations), self._stop,
                                 final=(UsageError, PermissionDeniedError))
        if not claimed:
            return False
        if self.membership.key != wanted:  # moved: hold the mesh as seen from the new address
            d.snapshot_applied.clear()
            return await until(d.snapshot_applied.wait(), self._stop, tasks)
        return True

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

    async def _on_disconnect(self) -> None:
        log.warning("disconnected from NATS; WireGuard is left as it is")

    async def _on_reconnect(self) -> None:
        self.dispatch.emit(Reconnected())
