#!/usr/bin/env python3
"""P6: a fleet on one nats-server: N nodes watching one bucket, a few of them real agents.

Method. An `ikto_lab.NamespaceLab` runs --agents real `ikto agent`s (wireguard-go, each in its
own namespaces) and one nats-server (2.15 by default, --server picks another binary); the
first agent creates the bucket (`Store.open_bucket(create=True)`: max_consumers 100,000, direct
gets). This process then enters the server's namespace and, per level N, adds N - agents
simulated nodes spread over worker processes (at most 500 each). A simulated node does what
the design (docs/liveness.md) gives a node in steady state, through ikto's own Store:

  - an entry `peers.<id>` (written once, as a claim would),
  - one connection (the agent's options: ping every 5 s) and one watch on `peers.*` (ikto's
    watch: inactive_threshold, a snapshot, then every change),
  - a direct get of its own `peers.<id>` every `selfcheck_interval(10, N)` s (x 0.8-1.2),
  - a presence write `alive.<id>` (+ the read-back of its server timestamp) every
    reclaim_after / 4 = 900 s (x 0.8-1.0), phases random as in a fleet that runs for a while.

The simulated nodes have no WireGuard: bench/wg_responder.py holds their keys and answers the
real agents' handshakes and keepalives, so real agents see N - 1 live peers (without it they
would read the presence of every silent peer: --no-data-plane shows that).

Per level: wait until every real agent holds N - 1 peers with a handshake; settle; then a
steady-state window (--window s): messages the server sent to each connection (`/connz`
out_msgs, per connection name: `ikto-agent <node>`, `ikto-sim <i>`), the server's CPU and RSS
(/proc/<pid>), and the CPU of everything else on this 2-core machine. Then --joins joins, one
a second: a new `peers.<id>` entry; each watcher records when ikto's watch handed it over (one
CLOCK_MONOTONIC for every process); real agents: their "peer joined" line. The joins leave
again, the simulated nodes stop (deleting their consumers) and the next level starts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c
from ikto import entry, ipam, records
from ikto.config import load_config
from ikto.membership import selfcheck_interval
from ikto.models import Peer
from ikto.store import Store, StoreError
from ikto_lab import NamespaceLab
from ikto_lab import netns as lab_netns
from ikto_lab.nats import NatsServer, binary_version, find_binary

LEVELS = (300, 1000, 3000)
MESH = "10.80.0.0/12"  # 4,096 subnets of /24
PREFIX = 24
BUCKET = "ikto-mesh"  # the lab's agents' bucket
PORT0 = 20000  # simulated node i listens (in wg_responder) on PORT0 + i
PER_PROC = 500  # simulated nodes per worker process
HEARTBEAT = 10.0  # the agent's default heartbeat_interval
PRESENCE_EVERY = 3600.0 / 4  # reclaim_after / 4 with the default reclaim_after
TARGETS = {
    "agent_msgs_per_s": 1.0,  # each agent, on average, at any N
    "join_all_reached_p99_s": 1.0,  # at 3,000 watchers
    "server_cpu_pct": 10.0,  # of one core, at 3,000
}
Json = dict[str, Any]


def progress(msg: str) -> None:
    print(f"[p6 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Simulated nodes: keys, subnets, entries


@dataclasses.dataclass(frozen=True)
class Sim:
    index: int
    private_key: str
    public_key: str
    subnet: str
    port: int

    @property
    def key(self) -> str:
        return ipam.peer_key(ip_network(self.subnet))

    def entry(self, address: str) -> bytes:
        """The entry an ikto node writes (with `endpoints`: it speaks for itself)."""
        return entry.encode(
            Peer(
                f"sim{self.index}",
                self.public_key,
                ip_address(address),
                ip_network(self.subnet),
                self.port,
                (),
            )
        )


def make_sims(n: int, taken: set[str]) -> list[Sim]:
    """n nodes on /24s of MESH that no agent holds, each with a fresh key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = serialization.Encoding.Raw
    subnets = (str(s) for s in list(ip_network(MESH).subnets(new_prefix=PREFIX))[1:] if str(s) not in taken)
    out = []
    for i, subnet in zip(range(n), subnets, strict=False):
        k = X25519PrivateKey.generate()
        priv = k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        pub = k.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        out.append(Sim(i, base64.b64encode(priv).decode(), base64.b64encode(pub).decode(), subnet, PORT0 + i))
    if len(out) < n:
        raise SystemExit(f"p6: only {len(out)} free subnets in {MESH}")
    return out


# Worker process: many simulated nodes (`--role sims`), driven by JSON lines on stdin


class SimNode:
    """One simulated node's NATS side: a Store, a watch, its self-check and presence loops."""

    def __init__(self, index: int, key: str, url: str, nodes: int, record: dict[str, list[Any]]) -> None:
        self.index, self.key, self.url, self.nodes = index, key, url, nodes
        self.record = record  # armed keys -> [(index, monotonic time)]
        self.store: Store | None = None
        self.entries: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self.counts = {"entries": 0, "gets": 0, "puts": 0, "errors": 0}
        self.selfcheck = True

    async def start(self) -> None:
        config = load_config(None, nats_url=self.url, nats_kv=BUCKET, name=f"sim{self.index}")
        self.store = await Store.connect(config, name=f"ikto-sim {self.index}")
        await self.store.open_bucket(BUCKET, create=False)
        await self.store.stream_info()  # the follower reads the stream's identity before watching
        self.entries = self.store.watch("peers.*")
        while await anext(self.entries) is not None:  # the snapshot
            self.counts["entries"] += 1
        self.tasks = [asyncio.create_task(f()) for f in (self._follow, self._selfcheck, self._presence)]

    async def _follow(self) -> None:
        async for e in self.entries:
            if e is None:
                continue
            self.counts["entries"] += 1
            if (got := self.record.get(e.key)) is not None and e.operation == "PUT":
                got.append((self.index, time.monotonic()))

    async def _selfcheck(self) -> None:
        assert self.store is not None
        every = selfcheck_interval(HEARTBEAT, self.nodes)
        await asyncio.sleep(random.uniform(0, every))
        while True:
            try:
                if self.selfcheck:
                    await self.store.get(self.key)
                    self.counts["gets"] += 1
            except StoreError:
                self.counts["errors"] += 1
            await asyncio.sleep(every * random.uniform(0.8, 1.2))

    async def _presence(self) -> None:
        assert self.store is not None
        await asyncio.sleep(random.uniform(0, PRESENCE_EVERY))
        while True:
            try:
                rev = await self.store.put(ipam.alive_key(self.key), records.presence(f"sim{self.index}"))
                await self.store.stamp(rev)
                self.counts["puts"] += 1
            except StoreError:
                self.counts["errors"] += 1
            await asyncio.sleep(PRESENCE_EVERY * random.uniform(0.8, 1.0))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.entries is not None:
            with contextlib.suppress(Exception):
                await self.entries.aclose()  # ikto's watch deletes its consumer
        if self.store is not None:
            await self.store.close()


async def role_sims(url: str) -> None:
    sims: list[SimNode] = []
    record: dict[str, list[Any]] = {}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        reply: Json = {}
        if cmd["cmd"] == "start":
            t0 = time.monotonic()
            errors: list[str] = []
            todo = [SimNode(i, k, url, cmd["nodes"], record) for i, k in cmd["sims"]]
            for b in range(0, len(todo), 16):  # 16 snapshots in flight per process
                batch = todo[b : b + 16]
                for s, r in zip(
                    batch,
                    await asyncio.gather(*(s.start() for s in batch), return_exceptions=True),
                    strict=True,
                ):
                    if isinstance(r, BaseException):
                        errors.append(f"{type(r).__name__}: {r}")
                        with contextlib.suppress(Exception):
                            await s.stop()
                    else:
                        sims.append(s)
            reply = {
                "started": len(sims),
                "errors": errors[:3],
                "failed": len(errors),
                "seconds": time.monotonic() - t0,
            }
        elif cmd["cmd"] == "arm":
            record.clear()
            record.update({k: [] for k in cmd["keys"]})
            reply = {"ok": True}
        elif cmd["cmd"] == "collect":
            reply = {"times": record}
        elif cmd["cmd"] == "variant":  # P6's breakdown: what the server spends on what
            for s in sims:
                s.selfcheck = cmd["selfcheck"]
                if s.store is not None:
                    s.store._nc.options["ping_interval"] = cmd["ping_interval"]
            reply = {"ok": True}
        elif cmd["cmd"] == "stats":
            reply = {k: sum(s.counts[k] for s in sims) for k in ("entries", "gets", "puts", "errors")}
        elif cmd["cmd"] == "stop":
            for b in range(0, len(sims), 64):
                await asyncio.gather(*(s.stop() for s in sims[b : b + 64]))
            reply = {"stopped": len(sims)}
            sims = []
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Workers:
    """The worker processes of one level."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, sims: list[Sim], nodes: int) -> list[Json]:
        nprocs = max(1, math.ceil(len(sims) / PER_PROC))
        for _ in range(nprocs):
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--role",
                    "sims",
                    "--url",
                    self.url,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 26,
                )
            )
        shares = [[[s.index, s.key] for s in sims[i::nprocs]] for i in range(nprocs)]
        return await self.call({"cmd": "start", "nodes": nodes}, [{"sims": sh} for sh in shares], timeout=900)

    async def call(self, cmd: Json, per_proc: list[Json] | None = None, timeout: float = 120) -> list[Json]:
        return await c.ask_each(self.procs, cmd, per_proc, timeout, who="p6")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.call({"cmd": "stop"}, timeout=300)
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs = []


# The lab


class FleetLab(NamespaceLab):
    """The namespace lab with a chosen nats-server binary."""

    def __init__(self, *args: Any, nats_binary: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.nats_binary = nats_binary

    def nats_servers(self) -> list[NatsServer]:
        return [dataclasses.replace(s, binary=self.nats_binary) for s in super().nats_servers()]


def connz(monitor: str) -> dict[int, Json]:
    """Every client connection the server has: cid -> name, out_msgs, in_msgs."""
    with urllib.request.urlopen(f"{monitor}/connz?limit=100000", timeout=60) as r:
        data = json.load(r)
    return {
        cn["cid"]: {"name": cn.get("name", ""), "out_msgs": cn["out_msgs"], "in_msgs": cn["in_msgs"]}
        for cn in data.get("connections", [])
    }


def rates(a: dict[int, Json], b: dict[int, Json], seconds: float, prefix: str) -> dict[str, float]:
    """Messages a second the server sent to each connection named prefix* (in both samples)."""
    return {
        b[cid]["name"]: (b[cid]["out_msgs"] - a[cid]["out_msgs"]) / seconds
        for cid in a.keys() & b.keys()
        if b[cid]["name"].startswith(prefix)
    }


def wg_go_pids(lab: NamespaceLab, node: str) -> list[int]:
    out = []
    for pid in lab_netns.pids(lab.netns(node)):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                out.append(pid)
    return out


def cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            total += c.cpu_seconds(p)
    return total


def peers_with_handshake(lab: NamespaceLab, node: str) -> tuple[int, int]:
    """(peers, peers with a handshake) in the node's WireGuard."""
    dev = lab.config(node)["wg_dev_name"]
    cp = lab.exec(node, ["wg", "show", dev, "dump"], check=True)
    rows = [ln.split("\t") for ln in cp.stdout.splitlines()[1:]]
    return len(rows), sum(1 for r in rows if len(r) >= 5 and r[4] != "0")


def joined_lines(log: Path, offset: int, public_keys: dict[str, str]) -> dict[str, float]:
    """public key -> time of the agent's "peer joined" line for it, from `offset` on."""
    out: dict[str, float] = {}
    with log.open() as f:
        f.seek(offset)
        for ln in f:
            if 'msg="peer joined"' in ln:
                fields = c.parse_logfmt(ln)
                pk = fields.get("public_key", "")
                if pk in public_keys and pk not in out:
                    out[pk] = datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    return out


class Responder:
    """bench/wg_responder.py: the simulated nodes' WireGuard."""

    def __init__(self, keys_file: Path) -> None:
        self.keys_file = keys_file
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve().parent / "wg_responder.py"),
            str(self.keys_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise SystemExit("p6: wg_responder did not start")

    async def stats(self) -> Json:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        out: Json = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))
        return out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run_levels(lab: FleetLab, args: argparse.Namespace, workdir: Path) -> list[Json]:
    agents = [n for n in lab.members() if lab.agent_running(n)]
    nats = lab.nats_servers()[0]
    assert nats.pid is not None
    server_pid = nats.pid
    monitor = f"http://{nats.address}:{nats.monitor_port}"
    address = nats.address  # the simulated nodes' underlay address: this namespace's
    taken = {
        str(ipam.node_subnet(ip_network(MESH), ip_address(lab.config(a)["private_address"]), PREFIX))
        for a in agents
    }
    top = max(args.levels)
    sims = make_sims(top - len(agents) + args.joins, taken)
    joiners, sims = sims[-args.joins :] if args.joins else [], sims[: len(sims) - args.joins]
    keys_file = workdir / "sim-keys.json"
    keys_file.write_text(
        json.dumps({"address": address, "nodes": [[s.port, s.private_key] for s in [*sims, *joiners]]})
    )
    responder = Responder(keys_file)
    if args.data_plane:
        await responder.start()
    config = load_config(None, nats_url=lab.nats_url(), nats_kv=BUCKET, name="p6")
    store = await Store.connect(config, name="ikto-bench p6")
    await store.open_bucket(BUCKET, create=False)
    written = 0
    results = []
    try:
        for level in sorted(args.levels):
            n_sims = level - len(agents)
            progress(f"N={level}: writing {n_sims - written} entries")
            for b in range(written, n_sims, 256):
                await asyncio.gather(
                    *(store.put(s.key, s.entry(address)) for s in sims[b : min(b + 256, n_sims)])
                )
            written = max(written, n_sims)
            workers = Workers(lab.nats_url())
            try:
                results.append(
                    await one_level(
                        lab,
                        args,
                        level,
                        sims[:n_sims],
                        joiners,
                        agents,
                        workers,
                        store,
                        responder,
                        server_pid,
                        monitor,
                        address,
                    )
                )
            finally:
                await workers.stop()
        return results
    finally:
        await store.close()
        await responder.stop()


async def measure(
    workers: Workers, groups: dict[str, list[int]], server_pid: int, monitor: str, seconds: float
) -> Json:
    """One steady-state window: messages to each connection (server side), CPU of everything."""
    s0 = await workers.call({"cmd": "stats"})
    za = await asyncio.to_thread(connz, monitor)
    ta = time.monotonic()
    cpu0 = {k: cpu(v) for k, v in groups.items()}
    sc0 = c.cpu_seconds(server_pid)
    load0 = os.getloadavg()
    await asyncio.sleep(seconds)
    sc1 = c.cpu_seconds(server_pid)
    cpu1 = {k: cpu(v) for k, v in groups.items()}
    tb = time.monotonic()
    zb = await asyncio.to_thread(connz, monitor)
    tz = time.monotonic()
    s1 = await workers.call({"cmd": "stats"})
    dt = tb - ta
    rz = tz - ta  # the connz samples are taken just outside the CPU window
    agent_rate = rates(za, zb, rz, "ikto-agent ")
    sim_rate = list(rates(za, zb, rz, "ikto-sim ").values())
    diff = {k: sum(r[k] for r in s1) - sum(r[k] for r in s0) for k in ("gets", "puts", "errors")}
    return {
        "window_s": round(dt, 1),
        "agent_msgs_per_s": {
            k.removeprefix("ikto-agent "): round(v, 3) for k, v in sorted(agent_rate.items())
        },
        "sim_msgs_per_s": {
            "mean": round(sum(sim_rate) / max(1, len(sim_rate)), 3),
            "max": round(max(sim_rate, default=float("nan")), 3),
            "n": len(sim_rate),
        },
        "server_cpu_pct": round(100 * (sc1 - sc0) / dt, 2),
        "server_rss_mib": round(c.rss_mib(server_pid), 1),
        "other_cpu_pct": {k: round(100 * (cpu1[k] - cpu0[k]) / dt, 1) for k in groups},
        "loadavg": [round(x, 2) for x in (*load0, *os.getloadavg())],
        "sims_ops_per_s": {k: round(v / dt, 2) for k, v in diff.items()},
    }


async def breakdown(
    workers: Workers, groups: dict[str, list[int]], server_pid: int, monitor: str, seconds: float
) -> Json:
    """The server's CPU as the simulated nodes drop, one at a time, their self-checks and their
    connections' 5 s pings (what is left: the watches' idle heartbeats, presence, the agents)."""
    out = {}
    for name, variant in (
        ("without the sims' self-checks", {"selfcheck": False, "ping_interval": 5}),
        ("and with pings every 120 s", {"selfcheck": False, "ping_interval": 120}),
    ):
        await workers.call({"cmd": "variant", **variant})
        await asyncio.sleep(6)  # pings already scheduled go out
        m = await measure(workers, groups, server_pid, monitor, seconds)
        out[name] = {
            "server_cpu_pct": m["server_cpu_pct"],
            "sim_msgs_per_s": m["sim_msgs_per_s"]["mean"],
            "sims_ops_per_s": m["sims_ops_per_s"],
            "sim_workers_cpu_pct": m["other_cpu_pct"]["sim workers"],
        }
        progress(f"breakdown, {name}: server {m['server_cpu_pct']} % CPU")
    await workers.call({"cmd": "variant", "selfcheck": True, "ping_interval": 5})
    return out


async def one_level(
    lab: FleetLab,
    args: argparse.Namespace,
    level: int,
    sims: list[Sim],
    joiners: list[Sim],
    agents: list[str],
    workers: Workers,
    store: Store,
    responder: Responder,
    server_pid: int,
    monitor: str,
    address: str,
) -> Json:
    out: Json = {"nodes": level, "simulated": len(sims), "agents": len(agents)}
    c0, t0 = c.cpu_seconds(server_pid), time.monotonic()
    started = await workers.start(sims, level)
    out["watchers_started"] = sum(r["started"] for r in started) + len(agents)
    out["watch_errors"] = [e for r in started for e in r["errors"]][:3]
    out["setup_s"] = round(time.monotonic() - t0, 1)
    out["setup_server_cpu_s"] = round(c.cpu_seconds(server_pid) - c0, 1)
    progress(
        f"N={level}: {out['watchers_started']} watchers in {out['setup_s']} s "
        f"(server CPU {out['setup_server_cpu_s']} s) {'; '.join(out['watch_errors'])}"
    )
    # Every real agent holds the others, with a handshake (the responder answers for the simulated).
    deadline = time.monotonic() + args.converge
    while True:
        held = {a: await asyncio.to_thread(peers_with_handshake, lab, a) for a in agents}
        ok = all(
            p >= level - 1 and (h >= 0.98 * (level - 1) or not args.data_plane) for p, h in held.values()
        )
        if ok or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    out["agents_peers_handshakes"] = {a: list(v) for a, v in held.items()}
    progress(f"N={level}: agents hold (peers, with handshake) {held}; settling {args.settle:g} s")
    await asyncio.sleep(args.settle)

    # Steady state.
    info = await store.bucket_info()
    out["consumers"], out["max_consumers"] = info.consumers, info.max_consumers
    agent_pids = [p for a in agents if (p := lab.agent_pid(a)) is not None]
    wg_pids = [p for a in agents for p in wg_go_pids(lab, a)]
    groups = {
        "sim workers": workers.pids(),
        "agents": agent_pids,
        "wireguard-go (agents)": wg_pids,
        "this process": [os.getpid()],
    }
    if responder.proc is not None:
        groups["wg responder"] = [responder.proc.pid]
    progress(f"N={level}: steady-state window {args.window:g} s")
    out.update(await measure(workers, groups, server_pid, monitor, args.window))
    out["selfcheck_interval_s"] = selfcheck_interval(HEARTBEAT, level)
    statuses = {}
    for a in agents:
        with contextlib.suppress(Exception):
            h = (await asyncio.to_thread(lab.agent_status, a))["health"]
            statuses[a] = {"presence": h.get("presence"), "peers_in_wireguard": h.get("peers_in_wireguard")}
    out["agents_health"] = statuses
    if responder.proc is not None:
        out["responder"] = await responder.stats()
    progress(
        f"N={level}: agents {out['agent_msgs_per_s']} msg/s, sims {out['sim_msgs_per_s']}, "
        f"server {out['server_cpu_pct']} % CPU, {out['server_rss_mib']} MiB"
    )

    # Joins: a new peers.<id>, one a second; every watcher's delivery time.
    if joiners:
        keys = [j.key for j in joiners]
        await workers.call({"cmd": "arm", "keys": keys})
        logs = {a: lab.layout.agent_log(a) for a in agents}
        offsets = {a: p.stat().st_size for a, p in logs.items()}
        sent: dict[str, tuple[float, float]] = {}
        for j in joiners:
            sent[j.key] = (time.monotonic(), time.time())
            await store.put(j.key, j.entry(address))
            await asyncio.sleep(args.join_gap)
        await asyncio.sleep(3.0)
        got = await workers.call({"cmd": "collect"})
        per_join: dict[str, list[float]] = {k: [] for k in keys}
        for r in got:
            for k, hits in r["times"].items():
                per_join[k] += [(t - sent[k][0]) * 1000 for _, t in hits]
        every = [x for xs in per_join.values() for x in xs]
        out["join_deliveries"] = f"{len(every)}/{len(keys) * len(sims)}"
        out["join_every_delivery_ms"] = c.summary(every)
        out["join_all_reached_ms"] = c.summary([max(xs) for xs in per_join.values() if xs])
        out["join_first_ms"] = c.summary([min(xs) for xs in per_join.values() if xs])
        by_pk = {j.public_key: j.key for j in joiners}
        agent_lat = []
        for a, log in logs.items():
            for pk, t in (await asyncio.to_thread(joined_lines, log, offsets[a], by_pk)).items():
                agent_lat.append((t - sent[by_pk[pk]][1]) * 1000)
        out["join_agents_applied_ms"] = c.summary(agent_lat)
        out["every_join_reached_all"] = len(every) == len(keys) * len(sims)
        for j in joiners:
            await store.delete(j.key)
        await asyncio.sleep(2.0)
        progress(
            f"N={level}: joins {out['join_deliveries']} delivered, every delivery "
            f"{c.fmt(out['join_every_delivery_ms'])}, all reached {c.fmt(out['join_all_reached_ms'])}"
        )
    if args.breakdown and level == max(args.levels):
        out["breakdown"] = await breakdown(workers, groups, server_pid, monitor, args.window / 2)
    out["all_watchers_accepted"] = out["watchers_started"] == level and not out["watch_errors"]
    # The agents' connections are found by name (`ikto-agent <node>`): if that changes, say so.
    out["agents_measured"] = len(out["agent_msgs_per_s"]) == len(agents)
    return out


# Output


def verdicts(r: Json) -> list[str]:
    v = []
    agent_max = max(r["agent_msgs_per_s"].values(), default=float("nan"))
    ok = agent_max <= TARGETS["agent_msgs_per_s"]
    v.append(f"agents <= {TARGETS['agent_msgs_per_s']:g} msg/s: {'pass' if ok else 'MISS'}")
    if r["nodes"] >= 3000:
        p99 = r.get("join_all_reached_ms", {}).get("p99", float("nan")) / 1000
        v.append(f"join p99 <= 1 s: {'pass' if p99 <= TARGETS['join_all_reached_p99_s'] else 'MISS'}")
        v.append(f"server <= 10 %: {'pass' if r['server_cpu_pct'] <= TARGETS['server_cpu_pct'] else 'MISS'}")
        v.append(f"3,000 watchers: {'pass' if r['all_watchers_accepted'] else 'MISS'}")
    return v


def print_results(res: Json) -> None:
    rows = []
    for r in res["results"]:
        agent = ", ".join(f"{v:.2f}" for v in r["agent_msgs_per_s"].values()) or "-"
        o = r["other_cpu_pct"]
        rows.append(
            [
                r["nodes"],
                f"{r['watchers_started']} ({r['consumers']} consumers)",
                agent,
                f"{r['sim_msgs_per_s']['mean']:.2f} (max {r['sim_msgs_per_s']['max']:.2f})",
                f"{r['server_cpu_pct']:.1f} %",
                f"{r['server_rss_mib']:.0f} MiB",
                f"p50 {r.get('join_every_delivery_ms', {}).get('p50', float('nan')):.0f} / "
                f"p99 {r.get('join_every_delivery_ms', {}).get('p99', float('nan')):.0f} ms",
                f"p50 {r.get('join_all_reached_ms', {}).get('p50', float('nan')):.0f} / "
                f"p99 {r.get('join_all_reached_ms', {}).get('p99', float('nan')):.0f} ms",
                f"sims {o.get('sim workers', 0):.0f}, resp {o.get('wg responder', 0):.0f}, agents "
                f"{o.get('agents', 0):.1f}, wg-go {o.get('wireguard-go (agents)', 0):.1f} %",
            ]
        )
    c.report(
        "p6_fleet",
        f"P6 fleet on one nats-server ({res['server']}; targets: each agent <= 1 msg/s at any N; "
        "at 3,000: one join reaches all p99 <= 1 s, server <= 10 % of a core, every watch accepted)",
        [
            "N",
            "watchers",
            "agent msg/s (each)",
            "sim msg/s",
            "server CPU",
            "server RSS",
            "join: every delivery",
            "join: all reached",
            "other CPU (% of a core)",
        ],
        rows,
        res,
        keepalive=False,
    )
    for r in res["results"]:
        print(
            f"  N={r['nodes']}: "
            + "; ".join(verdicts(r))
            + f"; window {r['window_s']} s, load {r['loadavg']}, "
            f"sims' ops/s {r['sims_ops_per_s']}, self-check every {r['selfcheck_interval_s']:g} s, "
            f"agents applied a join {c.fmt(r.get('join_agents_applied_ms', {}))}, "
            f"setup {r['setup_s']} s"
        )
        for name, b in r.get("breakdown", {}).items():
            print(
                f"    server CPU {name}: {b['server_cpu_pct']:.1f} % "
                f"(sims receive {b['sim_msgs_per_s']:.2f} msg/s)"
            )


def machine_line() -> str:
    cpu_model = c.cpu_model()
    return f"{os.cpu_count()} CPUs ({cpu_model}), shared: every process here competes with the server"


def main(argv: list[str] | None = None) -> Json:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--levels", type=int, nargs="+", default=list(LEVELS), help="fleet sizes N (agents included)"
    )
    ap.add_argument("--agents", type=int, default=2, help="real agents among the N")
    ap.add_argument("--server", default="2.15", help="nats-server version (2.15, 2.9) or a binary's path")
    ap.add_argument("--window", type=float, default=60.0, help="steady-state seconds per level")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after setup before the window")
    ap.add_argument("--joins", type=int, default=10)
    ap.add_argument("--join-gap", type=float, default=1.0)
    ap.add_argument(
        "--converge", type=float, default=180.0, help="at most this long for agents to hold everyone"
    )
    ap.add_argument(
        "--no-data-plane",
        dest="data_plane",
        action="store_false",
        help="no wg_responder: the simulated nodes never answer handshakes",
    )
    ap.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the server-CPU breakdown at the largest N (two more windows of --window/2)",
    )
    ap.add_argument("--role", choices=("sims",), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role == "sims":
        asyncio.run(role_sims(a.url))
        return {}
    c.require_root()
    binary = Path(a.server) if "/" in a.server else find_binary(a.server)
    version = binary_version(binary)
    progress(f"nats-server {version} ({binary}); {machine_line()}")
    workdir = Path(tempfile.mkdtemp(prefix="ikto-bench-p6-"))
    lab = FleetLab(
        state_dir=workdir / "lab",
        name=f"ikp{os.getpid() % 10000}",
        mesh_cidr=MESH,
        subnet_prefix=PREFIX,
        nats_binary=binary,
    )
    try:
        lab.up(a.agents)
        lab.wait_converged(timeout=60)
        with lab_netns.entered(lab.netns("nats")):
            results = asyncio.run(run_levels(lab, a, workdir))
    finally:
        c.RESULTS.mkdir(parents=True, exist_ok=True)
        for n in lab.nodes() if lab.is_up() else []:
            with contextlib.suppress(Exception):
                shutil.copy(lab.layout.agent_log(n), c.RESULTS / f"p6_fleet-{n}-last.log")
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    res = {
        "server": f"nats-server {version}",
        "binary": str(binary),
        "machine_note": machine_line(),
        "targets": TARGETS,
        "data_plane": a.data_plane,
        "results": results,
    }
    print_results(res)
    return res


if __name__ == "__main__":
    main()
