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
from ikto.errors import IktoError, UsageError
from ikto.log import fields
from ikto.mesh import Mesh, MeshSpec
from ikto.models import Peer, Plan, WgPeer
from ikto.reconcile import applied, diff, peer_config
from ikto.render import render, render_wg, write_config
from ikto.store import RevisionMismatchError, Store, StoreError
from ikto.wg import Wg, WgError

log = logging.getLogger("ikto.agent")

# Above this many changes one `wg syncconf` of the whole mesh beats `wg set` batches
# (cold start: wireguard-go does the diffing itself, in one call).
SYNCCONF_THRESHOLD = 2000
RESYNC_SECONDS = 60.0  # full comparison with `wg show dump`, ± 20 % jitter
# The rendered file is for reboots and for people, not for WireGuard: rewriting 10k peers
# costs 60-190 ms of GIL, which showed up in the p99 of one-peer changes (bench P1). Write
# after WRITE_QUIET seconds without changes, and at least every WRITE_MAX_DELAY under churn.
WRITE_QUIET = 5.0
WRITE_MAX_DELAY = 60.0
BURST_WINDOW = 0.05  # an apply that follows another within this window waits…
BURST_WAIT = 0.005  # …this long, so a storm is applied in few `wg` calls
LOG_EACH_UP_TO = 50  # plans larger than this log one summary line


def _public_key_of(value: bytes | None) -> str | None:
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    pk = data.get("public_key") if isinstance(data, dict) else None
    return pk if isinstance(pk, str) else None


class Agent:
    """One mesh node: owns the WireGuard interface and our entry in the bucket."""

    def __init__(self, config: Config, config_path: Path | None, *, wg: Wg | None = None) -> None:
        config.require_agent_fields()
        assert config.private_key_path is not None and config.advertise_address is not None
        self.config = config
        self.config_path = config_path
        self.wg = wg or Wg(config.wg_dev_name)
        self.private_key = keys.read_private_key(config.private_key_path)
        # From `wg pubkey`, not ikto.keys: the agent then never loads cryptography (6.5 MiB).
        self.public_key = self.wg.public_key(self.private_key)
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
        self._entry_lock = asyncio.Lock()  # one writer of our own entry at a time: heartbeat, leave
        self._write_due: float | None = None  # loop time the rendered file is due
        self._write_since: float | None = None  # first unwritten change
        self._writer: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_soon = asyncio.Event()
        self._rebuild = asyncio.Event()
        self._rebuild_reason = ""
        self._heartbeat_now = asyncio.Event()
        self._leaving = False
        self._max_rev = 0  # newest revision the watch delivered
        self._hb_rev = 0  # revision of our last heartbeat: the watch must deliver it
        self._stream_ident: str | None = None
        self._grace_floor: float | None = None  # staleness clocks restart here (server time)
        self._mass_stale_warned = False
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
            if not await self._claim_with_retry():
                return self.exit_code
            self.mesh = Mesh(self._spec())
            self._tasks = [
                asyncio.create_task(self._watcher(), name="watch"),
                asyncio.create_task(self._liveness(), name="liveness"),
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
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
                await self._write_file()  # a restart or reboot finds the latest mesh
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
        if self.store is None or not self.store.connected:
            raise IktoError("not connected to NATS: cannot remove our entry now")
        self._leaving = True
        key = ipam.peer_key(self.self_peer.allowed_ip)
        try:
            async with self._entry_lock:  # a heartbeat in flight finishes first (it moves our revision)
                await self._delete_own_entry(key)
        except BaseException:
            self._leaving = False  # a failed leave leaves the node as it was: heartbeats go on
            raise
        log.info("left the mesh", extra=fields(key=key, allowed_ip=str(self.self_peer.allowed_ip)))
        if down:
            await asyncio.to_thread(self.wg.down, self.config.wg_config_path)
            log.info("interface removed", extra=fields(dev=self.config.wg_dev_name))
        self._stop.set()

    async def _delete_own_entry(self, key: str) -> None:
        """Delete our entry only while it is ours: with its revision, re-read if that moved."""
        assert self.store is not None
        revision = self.revision or None
        for _ in range(3):
            try:
                await self.store.delete(key, revision)
                return
            except RevisionMismatchError:
                cur = await self.store.get(key)
                if cur is None:
                    return  # already gone
                if _public_key_of(cur.value) != self.public_key:
                    log.warning(
                        "our address is held by another node now; leaving its entry alone",
                        extra=fields(key=key, revision=cur.revision),
                    )
                    return
                revision = cur.revision
        raise IktoError(f"could not remove our entry {key}: it kept changing; try again")

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
                await self.store.open_bucket(
                    self.config.nats_kv,
                    create=self.config.create_bucket,
                    replicas=self.config.bucket_replicas,
                )
                log.info("connected to NATS", extra=fields(bucket=self.config.nats_kv))
                return True
            except StoreError as e:
                if self.store is not None:
                    with contextlib.suppress(Exception):
                        await self.store.close()
                    self.store = None
                log.warning("NATS not ready; the mesh stays as it is", extra=fields(error=e, retry_in=delay))
                delay = await self._backoff(delay)
        return False

    async def _backoff(self, delay: float) -> float:
        """Wait about `delay` seconds (± 20 %, cut short by stop); the next, doubled, delay."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay * random.uniform(0.8, 1.2))
        return min(delay * 2, 30.0)

    async def _on_disconnect(self) -> None:
        log.warning("disconnected from NATS; WireGuard is left as it is")

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS; re-reading the bucket and re-asserting our entry")
        self._request_rebuild("reconnected to NATS")
        self._heartbeat_now.set()

    async def _claim_with_retry(self) -> bool:
        """Claim at startup, retrying transient NATS errors (e.g. a new R3 stream electing its
        leader) with backoff; a taken pinned address or a permission error is final."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self._claim()
                return True
            except StoreError as e:
                if isinstance(e, UsageError) or "permission denied" in str(e):
                    raise
                log.warning("claiming our address failed; retrying", extra=fields(error=e, retry_in=delay))
                delay = await self._backoff(delay)
        return False

    async def _claim(self) -> None:
        assert self.store is not None
        peer, rev = await claim(
            self.store,
            self.self_peer,
            mesh=self.config.mesh_cidr,
            prefix=self.config.subnet_prefix,
            pinned=self.config.address_pinned,
            reclaim_after=self.config.reclaim_after,
        )
        if peer.allowed_ip != self.self_peer.allowed_ip:
            await self._moved(peer)
        self.self_peer = peer
        self.revision = rev
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

    def _request_rebuild(self, reason: str) -> None:
        """Rebuild the watch from a fresh snapshot."""
        self._rebuild_reason = reason
        self._rebuild.set()

    def _hold_removals(self) -> None:
        """After a snapshot, peers missing from it stay in WireGuard for three heartbeats; a
        full resync then removes those still missing. A snapshot can be short of entries
        (a wiped bucket whose nodes have not re-asserted yet; a cluster replica that is behind
        right after a leader change: seen in the fault suite), and live nodes heartbeat within
        one interval, so only the ones that really are gone get removed."""
        loop = asyncio.get_running_loop()
        self._hold_removals_until = loop.time() + 3 * self.config.heartbeat_interval
        loop.call_at(self._hold_removals_until + 0.5, self._resync_soon.set)

    _hold_removals_until = 0.0

    async def _watcher(self) -> None:
        """Run the watch; rebuild it from a fresh snapshot when asked (reconnect, stall)."""
        while True:
            self._rebuild.clear()
            inner = asyncio.create_task(self._watch_once())
            rebuild = asyncio.create_task(self._rebuild.wait())
            done, _ = await asyncio.wait([inner, rebuild], return_when=asyncio.FIRST_COMPLETED)
            if inner in done:
                rebuild.cancel()
                exc = inner.exception()
                if exc is not None and not isinstance(exc, StoreError):
                    raise exc
                log.warning("the watch ended; starting it again", extra=fields(error=exc))
                await asyncio.sleep(1.0)
                continue
            inner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inner
            reason = self._rebuild_reason
            log.warning("rebuilding the watch from a fresh snapshot", extra=fields(reason=reason))

    async def _watch_once(self) -> None:
        """Read a snapshot into a new Mesh, swap it in whole, then follow the changes."""
        assert self.store is not None
        mesh = Mesh(self._spec())
        self_key = mesh.spec.self_key
        live = self._watch_live = False
        self._max_rev = 0
        with contextlib.suppress(StoreError):  # the identity this watch follows
            self._stream_ident, _ = await self.store.stream_info()
        async for e in self.store.watch("peers.*"):
            if e is None:
                if not live:
                    live = self._watch_live = True
                    old = self.mesh
                    # Peers already out of WireGuard stay out until they write again: a
                    # rebuild must not hand a dead node a fresh grace (and bring it back).
                    mesh.expired = {
                        k
                        for k in old.expired
                        if k in mesh.entries and mesh.revision_of(k) == old.revision_of(k)
                    }
                    self.mesh = mesh
                    self._grace_floor = mesh.server_now  # everyone else gets a fresh grace
                    self.snapshot_done = True
                    self._hold_removals()
                    log.info(
                        "bucket snapshot loaded",
                        extra=fields(entries=len(mesh), rejected=len(mesh.rejected)),
                    )
                    await self.full_reconcile()
                continue
            self._max_rev = max(self._max_rev, e.revision)
            if e.operation == "PUT" and e.value is not None:
                touched, rej = mesh.put(e.key, e.value, e.revision, e.created)
                if rej is not None and e.key != self_key:
                    log.warning(
                        "rejected entry", extra=fields(key=e.key, revision=e.revision, reason=rej.reason)
                    )
                if e.key == self_key:
                    self._self_entry(e.value, e.revision)
            else:
                touched = mesh.delete(e.key, e.created)
                if e.key == self_key and live and not self._leaving:
                    log.warning("our entry was deleted; putting it back", extra=fields(key=e.key))
                    self._heartbeat_now.set()
            touched.discard(self.public_key)
            if touched and live:
                self._dirty |= touched
                self._wake.set()

    def _self_entry(self, value: bytes, revision: int) -> None:
        if _public_key_of(value) == self.public_key:
            self.revision = revision
        elif not self._leaving:
            log.error(
                "our address was overwritten by another node's entry",
                extra=fields(key=self.mesh.spec.self_key, revision=revision),
            )
            self._heartbeat_now.set()

    # Liveness

    async def _liveness(self) -> None:
        """Every heartbeat_interval (jittered): rewrite our entry, check the watch, expire."""
        while True:
            delay = self.config.heartbeat_interval * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_now.wait(), delay)
            self._heartbeat_now.clear()
            if self.store is None or not self.store.connected or self._leaving:
                continue
            await self._heartbeat()
            await self._check_watch()
            self._expire()

    async def _heartbeat(self) -> None:
        """Rewrite our entry with its revision (and a TTL where the server has them); if it
        disappeared or changed under us, put it back. The store can lose acknowledged writes
        and anyone with rights may delete it: this is how it comes back."""
        async with self._entry_lock:
            if not self._leaving:  # a leave that won the lock has removed the entry for good
                await self._heartbeat_locked()

    async def _heartbeat_locked(self) -> None:
        assert self.store is not None
        key = self.mesh.spec.self_key
        value = json.dumps(self.self_peer.to_entry()).encode()
        ttl = self.config.reclaim_after
        try:
            try:
                rev = await self.store.update(key, value, self.revision, ttl=ttl)
            except RevisionMismatchError:
                cur = await self.store.get(key)
                if cur is None:
                    log.warning("our entry was missing; putting it back", extra=fields(key=key))
                    rev = await self.store.create(key, value, ttl=ttl)
                elif _public_key_of(cur.value) == self.public_key or self.config.address_pinned:
                    if _public_key_of(cur.value) != self.public_key:
                        log.error(
                            "another node wrote our pinned address; putting ours back",
                            extra=fields(key=key, revision=cur.revision),
                        )
                    rev = await self.store.update(key, value, cur.revision, ttl=ttl)
                else:
                    # Another node holds our key: it reclaimed the address while we were
                    # silent (or someone wrote it by hand). Fighting over it would flap both
                    # nodes; we move instead, as at startup.
                    log.error(
                        "our address is now held by another node; moving to a new one",
                        extra=fields(key=key, revision=cur.revision),
                    )
                    await self._claim()
                    self._request_rebuild("we moved to a new address")
                    return
        except StoreError as e:
            log.warning("heartbeat failed", extra=fields(key=key, error=e))
            if "does not exist" in str(e) or "not found" in str(e).lower():
                with contextlib.suppress(StoreError):
                    await self.store.open_bucket(
                        self.config.nats_kv,
                        create=self.config.create_bucket,
                        replicas=self.config.bucket_replicas,
                    )
                    self._request_rebuild("the bucket was gone")
            return
        self.revision = rev
        self._hb_rev = rev

    async def _check_watch(self) -> None:
        """Notice a watch that silently stopped: nats-py's never delivers again after the
        bucket is deleted and recreated or restored from an older snapshot."""
        assert self.store is not None
        try:
            ident, last = await self.store.stream_info()
        except StoreError:
            return
        if self._stream_ident is not None and ident != self._stream_ident:
            self._request_rebuild("the bucket was recreated")
        elif last < self._max_rev:
            # Confirm on the next check: in a cluster a lagging replica can answer stream info.
            self._behind += 1
            if self._behind >= 2:
                self._request_rebuild("the bucket went back in time (restored from an older snapshot?)")
        elif self._watch_live and self._prev_hb_rev > self._max_rev:
            self._request_rebuild("the watch stopped delivering (our own heartbeat never arrived)")
        if last >= self._max_rev:
            self._behind = 0
        self._stream_ident = ident
        self._prev_hb_rev = self._hb_rev

    _prev_hb_rev = 0
    _watch_live = False
    _behind = 0  # consecutive checks that saw the bucket behind the watch

    def _expire(self) -> None:
        """Take peers silent for remove_after out of WireGuard (their entries stay) — unless
        more than half of them look silent, which says more about us than about them."""
        if not self.snapshot_done or self.store is None or not self.store.connected:
            return
        mesh = self.mesh
        keys = [k for k in mesh.entries if k != mesh.spec.self_key]
        silent = {
            k for k in keys
            if k in mesh.expired
            or ((t := mesh.silent_for(k, self._grace_floor)) is not None and t > self.config.remove_after)
        }
        if keys and len(silent) > len(keys) / 2:
            if not self._mass_stale_warned:
                log.warning(
                    "more than half of the peers look silent: not removing any",
                    extra=fields(silent=len(silent), peers=len(keys)),
                )
                self._mass_stale_warned = True
            return
        self._mass_stale_warned = False
        for k in silent - mesh.expired:
            log.warning(
                "peer silent too long; removed from WireGuard, entry kept",
                extra=fields(node=mesh.entries[k][1].name, key=k, silent_s=round(mesh.silent_for(k) or 0)),
            )
        touched = mesh.set_expired(silent)
        if touched:
            self._dirty |= touched
            self._wake.set()

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
            # A full comparison right after a snapshot may not remove yet (see _hold_removals);
            # a delete the watch delivered is authoritative and applies at once.
            if (
                public_keys is None
                and plan.remove
                and asyncio.get_running_loop().time() < self._hold_removals_until
            ):
                plan = Plan(set=plan.set, remove=())
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
        now = asyncio.get_running_loop().time()
        if self._write_since is None:
            self._write_since = now
        self._write_due = min(now + WRITE_QUIET, self._write_since + WRITE_MAX_DELAY)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_when_due())

    async def _write_when_due(self) -> None:
        loop = asyncio.get_running_loop()
        while self._write_due is not None and (delay := self._write_due - loop.time()) > 0:
            await asyncio.sleep(delay)
        await self._write_file()

    async def _write_file(self) -> None:
        """Render the last known mesh to <config_dir>/<dev>.conf (atomically, 0600)."""
        self._write_due = self._write_since = None
        peers = self.mesh.peers()
        path = self.config.wg_config_path
        try:
            await asyncio.to_thread(lambda: write_config(path, render(self.config, self.private_key, peers)))
        except OSError as e:
            log.error("writing the rendered config failed", extra=fields(path=str(path), error=e))

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
        """The bucket's peers joined with WireGuard's live view and their liveness."""
        dev = await asyncio.to_thread(self.wg.dump)
        mesh = self.mesh
        now = time.time()
        peers = {p.public_key: p for p in mesh.peers()}
        for k in mesh.expired:
            if k in mesh.entries:
                p = mesh.entries[k][1]
                peers.setdefault(p.public_key, p)
        out = []
        for p in sorted(peers.values(), key=lambda p: (p.allowed_ip.version, p.allowed_ip)):
            key = ipam.peer_key(p.allowed_ip)
            wp = dev.peers.get(p.public_key)
            hs = wp.latest_handshake if wp else 0
            silent = mesh.silent_for(key, self._grace_floor)
            state = "ok" if wp is not None else "pending"
            if key in mesh.expired:
                state = "expired"
            elif silent is not None and silent > self.config.stale_after:
                state = "stale"
            out.append(
                {
                    **p.to_entry(),
                    "state": state,
                    "in_wireguard": wp is not None,
                    "silent_s": None if silent is None else round(silent),
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
