"""The agent: claim our address, watch the bucket, keep WireGuard equal to it.

Wiring only: validation lives in mesh.py, the diff in reconcile.py, shell-outs in wg.py
(always run in a worker thread, never on the event loop), NATS in store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

from ikto import ipam, keys
from ikto.claim import claim
from ikto.config import Config, write_atomic
from ikto.errors import IktoError
from ikto.log import fields
from ikto.mesh import Mesh, MeshSpec
from ikto.models import Peer, Plan, WgPeer
from ikto.reconcile import applied, diff, peer_config
from ikto.render import render, render_wg, write_config
from ikto.store import Store, StoreError
from ikto.wg import Wg, WgError

log = logging.getLogger("ikto.agent")

# Above this many changes one `wg syncconf` of the whole mesh beats `wg set` batches
# (cold start: wireguard-go does the diffing itself, in one call).
SYNCCONF_THRESHOLD = 2000
RESYNC_SECONDS = 60.0  # full comparison with `wg show dump`, ± 20 % jitter
WRITE_DELAY = 1.0  # coalesce rewrites of the rendered config file
BURST_WINDOW = 0.05  # an apply that follows another within this window waits…
BURST_WAIT = 0.005  # …this long, so a storm is applied in few `wg` calls
LOG_EACH_UP_TO = 50  # plans larger than this log one summary line


class Agent:
    """One mesh node: owns the WireGuard interface and our entry in the bucket."""

    def __init__(self, config: Config, config_path: Path | None, *, wg: Wg | None = None) -> None:
        config.require_agent_fields()
        assert config.private_key_path is not None and config.advertise_address is not None
        self.config = config
        self.config_path = config_path
        self.wg = wg or Wg(config.wg_dev_name)
        self.private_key = keys.read_private_key(config.private_key_path)
        self.public_key = keys.public_key(self.private_key)
        self.self_peer = Peer(
            config.name, self.public_key, config.advertise_address, config.subnet, config.wg_port
        )
        self.mesh = Mesh(self._spec())
        self.observed: dict[str, WgPeer] = {}
        self.names: dict[str, str] = {}
        self.store: Store | None = None
        self.revision = 0
        self.snapshot_done = False
        self.started = time.time()
        self.last_full_reconcile: float | None = None
        self.wg_calls = 0
        self.apply_errors = 0
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._write_pending = False
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_soon = asyncio.Event()
        self.exit_code = 0

    def _spec(self) -> MeshSpec:
        return MeshSpec(
            self.config.mesh_cidr,
            self.config.subnet_prefix,
            self.public_key,
            ipam.peer_key(self.self_peer.allowed_ip),
        )

    # Lifecycle

    async def run(self, serve_api: Any = None) -> int:
        """Run until SIGTERM/SIGINT or `leave`; the interface and peers stay in place."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        log.info(
            "starting",
            extra=fields(
                name=self.config.name,
                dev=self.config.wg_dev_name,
                public_key=self.public_key,
                address=str(self.config.interface_address),
            ),
        )
        await asyncio.to_thread(self._bring_up)
        api_cleanup = await serve_api(self) if serve_api else None
        try:
            if not await self._connect():
                return self.exit_code
            assert self.store is not None
            await self._claim()
            self._tasks = [
                asyncio.create_task(self._watch(), name="watch"),
                asyncio.create_task(self._applier(), name="applier"),
                asyncio.create_task(self._resync_loop(), name="resync"),
            ]
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            return self.exit_code
        finally:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.store is not None:
                with contextlib.suppress(Exception):
                    await self.store.close()
            if api_cleanup is not None:
                await api_cleanup()
            log.info("stopped; interface and peers left in place", extra=fields(dev=self.config.wg_dev_name))

    def stop(self) -> None:
        """Ask the agent to stop (signal handler)."""
        self._stop.set()

    async def leave(self, down: bool) -> None:
        """Remove our entry from the bucket (with its revision), optionally the interface, then stop."""
        if self.store is not None and self.store.connected:
            key = ipam.peer_key(self.self_peer.allowed_ip)
            await self.store.delete(key, self.revision or None)
            log.info("left the mesh", extra=fields(key=key, allowed_ip=str(self.self_peer.allowed_ip)))
        else:
            raise IktoError("not connected to NATS: cannot remove our entry now")
        if down:
            await asyncio.to_thread(self.wg.down, self.config.wg_config_path)
            log.info("interface removed", extra=fields(dev=self.config.wg_dev_name))
        self._stop.set()

    # Startup steps

    def _bring_up(self) -> None:
        """Bring the interface up from the rendered config (the last known mesh), then fix it up."""
        path = self.config.wg_config_path
        if not self.wg.exists():
            if path.exists():
                try:
                    self.wg.up(path)
                    log.info("interface up from the last known mesh", extra=fields(config=str(path)))
                except WgError as e:
                    log.warning("last rendered config did not come up; starting empty", extra=fields(error=e))
                    with contextlib.suppress(WgError):
                        self.wg.delete()
                    write_config(path, render(self.config, self.private_key, []))
                    self.wg.up(path)
            else:
                write_config(path, render(self.config, self.private_key, []))
                self.wg.up(path)
                log.info("interface up", extra=fields(dev=self.config.wg_dev_name, config=str(path)))
        assert self.config.private_key_path is not None
        self.wg.configure(self.config.wg_port, self.config.private_key_path)
        self._fix_address()

    def _fix_address(self) -> None:
        want = self.config.interface_address
        for a in self.wg.addresses():
            if a.version == want.version and a.ip in self.config.mesh_cidr and a != want:
                self.wg.remove_address(a)
        self.wg.ensure_address(want, self.config.mtu)

    async def _connect(self) -> bool:
        """Connect to NATS, retrying with backoff until it works or we are stopped."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.store = await Store.connect(
                    self.config,
                    name=f"ikto-agent {self.config.name}",
                    on_disconnect=self._on_disconnect,
                    on_reconnect=self._on_reconnect,
                )
                await self.store.open_bucket(self.config.nats_kv, create=self.config.create_bucket)
                log.info("connected to NATS", extra=fields(bucket=self.config.nats_kv))
                return True
            except StoreError as e:
                if self.store is not None:
                    with contextlib.suppress(Exception):
                        await self.store.close()
                    self.store = None
                log.warning("NATS not ready; the mesh stays as it is", extra=fields(error=e, retry_in=delay))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)
        return False

    async def _on_disconnect(self) -> None:
        log.warning("disconnected from NATS; WireGuard is left as it is")

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS")
        self._resync_soon.set()

    async def _claim(self) -> None:
        assert self.store is not None
        peer, rev = await claim(
            self.store,
            self.self_peer,
            mesh=self.config.mesh_cidr,
            prefix=self.config.subnet_prefix,
            pinned=self.config.address_pinned,
        )
        if peer.allowed_ip != self.self_peer.allowed_ip:
            await self._moved(peer)
        self.self_peer = peer
        self.revision = rev
        self.mesh = Mesh(self._spec())
        log.info(
            "claimed address",
            extra=fields(allowed_ip=str(peer.allowed_ip), revision=rev, key=ipam.peer_key(peer.allowed_ip)),
        )

    async def _moved(self, peer: Peer) -> None:
        """Our address was taken: persist the new one and move the interface to it."""
        old = self.self_peer.allowed_ip
        new_base = str(peer.allowed_ip.network_address)
        log.warning(
            "address taken; moved to a new one",
            extra=fields(old=str(old), new=str(peer.allowed_ip)),
        )
        if self.config_path is not None:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
            data["private_address"] = new_base
            write_atomic(self.config_path, json.dumps(data, indent=2) + "\n")
        self.config = self.config.model_copy(update={"private_address": peer.allowed_ip.network_address})
        self.self_peer = peer
        await asyncio.to_thread(self._fix_address)
        await asyncio.to_thread(
            write_config, self.config.wg_config_path, render(self.config, self.private_key, self.mesh.peers())
        )

    # Running

    async def _watch(self) -> None:
        assert self.store is not None
        self_key = self.mesh.spec.self_key
        async for e in self.store.watch("peers.*"):
            if e is None:
                self.snapshot_done = True
                log.info(
                    "bucket snapshot loaded",
                    extra=fields(entries=len(self.mesh), rejected=len(self.mesh.rejected)),
                )
                await self.full_reconcile()
                continue
            if e.operation == "PUT" and e.value is not None:
                touched, rej = self.mesh.put(e.key, e.value, e.revision)
                if rej is not None and e.key != self_key:
                    log.warning(
                        "rejected entry", extra=fields(key=e.key, revision=e.revision, reason=rej.reason)
                    )
                if e.key == self_key:
                    await self._self_entry(e.value, e.revision)
            else:
                touched = self.mesh.delete(e.key)
                if e.key == self_key:
                    await self._reassert("our entry was deleted")
            touched.discard(self.public_key)
            if touched and self.snapshot_done:
                self._dirty |= touched
                self._wake.set()

    async def _self_entry(self, value: bytes, revision: int) -> None:
        try:
            mine = json.loads(value).get("public_key") == self.public_key
        except (ValueError, AttributeError):
            mine = False
        if mine:
            self.revision = revision
        else:
            log.error(
                "our address was overwritten by another node's entry",
                extra=fields(key=self.mesh.spec.self_key, revision=revision),
            )

    async def _reassert(self, why: str) -> None:
        assert self.store is not None
        key = self.mesh.spec.self_key
        if self._stop.is_set():
            return
        try:
            self.revision = await self.store.create(key, json.dumps(self.self_peer.to_entry()).encode())
            log.warning("re-asserted our entry", extra=fields(reason=why, key=key, revision=self.revision))
        except StoreError as e:
            log.error("could not re-assert our entry", extra=fields(reason=why, error=e))

    async def _applier(self) -> None:
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

    def _wanted(self, public_keys: set[str] | None) -> dict[str, Any]:
        ka = self.config.persistent_keepalive
        if public_keys is None:
            return {p.public_key: peer_config(p, ka) for p in self.mesh.peers()}
        out = {}
        for pk in public_keys:
            p = self.mesh.winner(pk)
            if p is not None and pk != self.public_key:
                out[pk] = peer_config(p, ka)
        return out

    async def _apply(self, public_keys: set[str] | None) -> None:
        """Apply the difference for these peers (or all) in one `wg` call."""
        async with self._apply_lock:
            wanted = self._wanted(public_keys)
            plan = diff(wanted, self.observed, public_keys)
            if not plan:
                return
            t0 = time.perf_counter()
            try:
                if len(plan) > SYNCCONF_THRESHOLD:
                    text = render_wg(self.config, self.private_key, self.mesh.peers())
                    await asyncio.to_thread(self.wg.syncconf, text)
                else:
                    await asyncio.to_thread(self.wg.apply, plan)
            except WgError as e:
                self.apply_errors += 1
                log.error("applying peers failed; will retry with a full resync", extra=fields(error=e))
                self._resync_soon.set()
                return
            self.wg_calls += 1
            self._log_plan(plan, (time.perf_counter() - t0) * 1000)
            applied(plan, self.observed)
            self._schedule_write()

    def _log_plan(self, plan: Plan, ms: float) -> None:
        if len(plan) > LOG_EACH_UP_TO:
            log.info(
                "applied peers",
                extra=fields(set=len(plan.set), removed=len(plan.remove), ms=round(ms, 1)),
            )
        for pc in plan.set:
            peer = self.mesh.winner(pc.public_key)
            name = peer.name if peer else "?"
            what = "peer changed" if pc.public_key in self.observed else "peer joined"
            self.names[pc.public_key] = name
            if len(plan) <= LOG_EACH_UP_TO:
                log.info(
                    what,
                    extra=fields(
                        name=name, public_key=pc.public_key, allowed_ip=",".join(pc.allowed_ips),
                        endpoint=pc.endpoint, ms=round(ms, 1),
                    ),
                )
        for pk in plan.remove:
            name = self.names.pop(pk, "?")
            if len(plan) <= LOG_EACH_UP_TO:
                log.info("peer left", extra=fields(name=name, public_key=pk, ms=round(ms, 1)))

    async def full_reconcile(self) -> None:
        """Compare the whole mesh with `wg show dump` and repair any drift."""
        try:
            if not await asyncio.to_thread(self.wg.exists):
                log.warning("interface is gone; bringing it up again", extra=fields(dev=self.wg.dev))
                await asyncio.to_thread(self._bring_up)
            dev = await asyncio.to_thread(self.wg.dump)
        except WgError as e:
            log.error("reading WireGuard failed", extra=fields(error=e))
            return
        async with self._apply_lock:
            self.observed = dict(dev.peers)
        self._dirty.clear()
        await self._apply(None)
        self.last_full_reconcile = time.time()

    async def _resync_loop(self) -> None:
        while True:
            delay = RESYNC_SECONDS * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync_soon.wait(), delay)
                await asyncio.sleep(1.0)  # let a burst of repairs settle
            self._resync_soon.clear()
            if self.snapshot_done:
                await self.full_reconcile()

    def _schedule_write(self) -> None:
        if self._write_pending:
            return
        self._write_pending = True
        asyncio.get_running_loop().call_later(WRITE_DELAY, lambda: asyncio.create_task(self._write_file()))

    async def _write_file(self) -> None:
        self._write_pending = False
        peers = self.mesh.peers()
        try:
            await asyncio.to_thread(
                lambda: write_config(self.config.wg_config_path, render(self.config, self.private_key, peers))
            )
        except OSError as e:
            path = str(self.config.wg_config_path)
            log.error("writing the rendered config failed", extra=fields(path=path, error=e))

    # Views for the admin API

    def node(self) -> dict[str, Any]:
        p = self.self_peer
        return {
            **p.to_entry(),
            "address": str(self.config.interface_address),
            "dev": self.config.wg_dev_name,
            "key": self.mesh.spec.self_key,
            "revision": self.revision,
        }

    def health(self) -> dict[str, Any]:
        connected = self.store is not None and self.store.connected
        return {
            "ok": connected and self.snapshot_done,
            "nats_connected": connected,
            "snapshot_loaded": self.snapshot_done,
            "peers_wanted": len(self.mesh.peers()),
            "peers_in_wireguard": len(self.observed),
            "rejected_entries": len(self.mesh.rejected),
            "wg_calls": self.wg_calls,
            "apply_errors": self.apply_errors,
            "last_full_reconcile": self.last_full_reconcile,
            "uptime_s": round(time.time() - self.started, 1),
        }

    async def peers_view(self) -> list[dict[str, Any]]:
        """The bucket's peers joined with WireGuard's live view."""
        dev = await asyncio.to_thread(self.wg.dump)
        out = []
        now = time.time()
        for p in sorted(self.mesh.peers(), key=lambda p: p.allowed_ip):
            wp = dev.peers.get(p.public_key)
            hs = wp.latest_handshake if wp else 0
            out.append(
                {
                    **p.to_entry(),
                    "in_wireguard": wp is not None,
                    "endpoint": wp.endpoint if wp else None,
                    "latest_handshake": hs,
                    "handshake_age_s": round(now - hs) if hs else None,
                    "rx_bytes": wp.rx_bytes if wp else 0,
                    "tx_bytes": wp.tx_bytes if wp else 0,
                }
            )
        return out

    def rejected_view(self) -> list[dict[str, Any]]:
        out = [
            {"key": r.key, "revision": r.revision, "reason": r.reason}
            for r in sorted(self.mesh.rejected.values(), key=lambda r: r.key)
        ]
        for key, winner in sorted(self.mesh.losers().items()):
            reason = f"public key already used by {winner}"
            out.append({"key": key, "revision": self.mesh.revision_of(key), "reason": reason})
        return out
