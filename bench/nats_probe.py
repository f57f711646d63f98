#!/usr/bin/env python3
"""Probe nats-server for thousands of KV watchers on one bucket: limits, cleanup and costs.

    python bench/nats_probe.py --server /usr/sbin/nats-server --watchers 3000

For each --server (default: Debian's 2.9 and the venv's 2.15) it starts its own nats-server on a
free 127.0.0.1 port with a store under /tmp, runs the phases below with plain nats-py (no ikto
code), prints one table and stops the server by pid. docs/nats-scale.md explains the figures.

  limits    max_consumers of a bucket made by js.create_key_value (as the agent makes it); the
            watch that hits the server's default cap and the error; raising it with update_stream
  restore   raising max_consumers where update_stream refuses (2.9 to 2.12.4), keeping the
            data: snapshot, delete, restore with the new config; does an open watch resume?
  misc      client_ip, the server's time from a direct get, a recreated bucket's sequences and
            what its open watch notices, a deleted bucket's error callback
  linger    how long a watch's consumer outlives watcher.stop(), a SIGKILL and a nats-py reset
            (--linger 310 to see the default 300 s go)
  watchers  kv.watch("peers.*") in --procs processes (one connection per --per-conn watchers)
            on a bucket made as an explicit stream with max_consumers, grown to 300, 1,000 and
            --watchers: creation time, idle server CPU and RSS, messages a watcher receives,
            and puts to unwatched keys (alive.<id>) in that bucket and in a second one
  load      from a separate process, at a fixed rate: direct gets, API gets, puts to
            unwatched keys, stream info: server µs per operation above idle
  fan-out   one put to peers.X reaches every watcher: first / p50 / p99 / all, server CPU
  cleanup   watcher.stop() leaves the consumer; js.delete_consumer removes it

CPU is utime+stime of the nats-server process (/proc/<pid>/stat) over the window. Every process
of the run shares this machine's cores: the table prints the watchers' and load generator's
own CPU so the figures can be judged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.client import __version__ as NATS_PY_VERSION
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import APIError
from nats.js.kv import KeyValue

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import ask_each, cpu_model, cpu_seconds, pct  # noqa: E402
from ikto_lab.nats import NatsServer  # noqa: E402
from ikto_lab.shell import LabError  # noqa: E402

DEFAULT_SERVERS = ("/usr/sbin/nats-server", str(REPO / ".venv" / "bin" / "nats-server"))
BUCKET = "probe"
STREAM = f"KV_{BUCKET}"
HISTORY = 5  # the agent's bucket: history 5, values <= 4 KiB
MAX_VALUE = 4096
ALIVE_BUCKET = "probe_alive"  # a second bucket nobody watches: presence written elsewhere
ALIVE_KEYS = 3000  # alive.<0..2999>, each written HISTORY times first so every put removes one
LOADS = "get:100,get:1000,getapi:100,getapi:1000,put:100,put:1000,putother:100,putother:1000,info:100"

Json = dict[str, Any]


# Processes


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """One nats-server on free loopback ports with its own store dir (ikto_lab's launcher)."""

    def __init__(self, binary: str, extra_conf: str = "") -> None:
        self.binary = binary
        self.version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.dir = Path(tempfile.mkdtemp(prefix="nats-probe-", dir="/tmp"))
        self.nats = NatsServer.loopback(self.dir, binary=Path(binary).resolve())
        if extra_conf:
            self.nats.config = f"jetstream {{\n{extra_conf}\n}}\n"
        self.url = self.nats.url

    def start(self) -> Server:
        try:
            self.nats.start()
        except LabError as e:
            raise SystemExit(f"nats_probe: {e}") from None
        return self

    @property
    def pid(self) -> int:
        pid = self.nats.pid
        assert pid is not None
        return pid

    def log_tail(self) -> str:
        return self.nats.log_tail(10)

    def stop(self) -> None:
        self.nats.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def connect(url: str, **kw: Any) -> Client:
    """A connection that does not log every error (the probe records the ones it provokes)."""

    async def quiet(_e: Exception) -> None:
        pass

    return await nats.connect(url, error_cb=quiet, allow_reconnect=False, **kw)


def describe(e: BaseException) -> str:
    """nats-py's exception as the probe reports it: class, code, err_code, description."""
    if isinstance(e, APIError):
        return f"{type(e).__name__}: code={e.code} err_code={e.err_code} description={e.description!r}"
    return f"{type(e).__name__}: {e}"




# The bucket


def kv_stream_config(bucket: str, max_consumers: int) -> StreamConfig:
    """The stream nats-py's create_key_value makes for a bucket, with max_consumers set.

    Same fields as nats-py 2.16 (nats/js/client.py create_key_value) with history 5 and values
    of at most 4 KiB, except allow_direct (create_key_value leaves it off unless direct=True).
    Servers before 2.11 ignore allow_msg_ttl.
    """
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
        max_consumers=max_consumers,
        max_msg_size=MAX_VALUE,
        max_msgs=-1,
        max_msgs_per_subject=HISTORY,
        num_replicas=1,
        storage=StorageType.FILE,
    )


async def consumer_count(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.consumer_count)


async def watch_many(kvs: list[KeyValue], n: int, stop_on_error: bool = True) -> tuple[list[Any], str | None]:
    """Open n watchers on peers.*, round-robin over the connections' buckets, 16 at a time."""
    watchers: list[Any] = []
    error: str | None = None
    for start in range(0, n, 16):
        batch = [kvs[i % len(kvs)].watch("peers.*") for i in range(start, min(n, start + 16))]
        for r in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(r, BaseException):
                error = error or describe(r)
            else:
                watchers.append(r)
        if error and stop_on_error:
            break
    return watchers, error


# Phase: limits


async def phase_limits(url: str, probe_to: int, raise_to: int) -> Json:
    """A bucket as the agent creates it; watch until the cap; raise the cap with update_stream."""
    out: Json = {}
    conns = [await connect(url) for _ in range(4)]
    js = conns[0].jetstream()
    try:
        kv = await js.create_key_value(
            KeyValueConfig(bucket="lim", history=HISTORY, max_value_size=MAX_VALUE, storage=StorageType.FILE)
        )
        si = await js.stream_info("KV_lim")
        out["create_key_value max_consumers"] = si.config.max_consumers
        out["create_key_value allow_direct"] = si.config.allow_direct
        kvs = [kv] + [await c.jetstream().key_value("lim") for c in conns[1:]]
        t0 = time.monotonic()
        watchers, error = await watch_many(kvs, probe_to + 1)
        out[f"watches accepted of {probe_to + 1}"] = len(watchers)
        out["watch error"] = error or "none"
        out["watch create s"] = round(time.monotonic() - t0, 2)
        cfg = si.config
        cfg.max_consumers = raise_to
        try:
            si = await js.update_stream(cfg)
            out[f"update_stream max_consumers={raise_to}"] = f"ok, now {si.config.max_consumers}"
            more, error = await watch_many(kvs, 1)
            out["one more watch after update"] = error or "ok"
            watchers += more
        except APIError as e:
            out[f"update_stream max_consumers={raise_to}"] = describe(e)
        for value in (0, -1):
            cfg.max_consumers = value
            try:
                si = await js.update_stream(cfg)
                out[f"update_stream max_consumers={value}"] = f"ok, now {si.config.max_consumers}"
            except APIError as e:
                out[f"update_stream max_consumers={value}"] = describe(e)
    finally:
        for c in conns[1:]:
            await c.close()  # the watchers go with their connections; the bucket with its stream
        await js.delete_key_value("lim")
        await conns[0].close()
    return out


# Phase: raise max_consumers by snapshot and restore, keeping the data


async def snapshot_stream(nc: Client, stream: str) -> tuple[bytes, Json]:
    """$JS.API.STREAM.SNAPSHOT: the stream's data as one blob, and its config and state."""
    inbox = nc.new_inbox()
    chunks: list[bytes] = []
    done = asyncio.get_running_loop().create_future()

    async def on_chunk(msg: Any) -> None:
        if msg.data:  # a chunk; ack it if asked (the server's flow control; not the last one)
            chunks.append(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, b"")
        elif not done.done():  # empty: the end (2.10+ add a status header)
            done.set_result(msg.headers)

    sub = await nc.subscribe(inbox, cb=on_chunk)
    req = {"deliver_subject": inbox, "no_consumers": True, "chunk_size": 128 * 1024, "jsck": False}
    reply = json.loads(
        (await nc.request(f"$JS.API.STREAM.SNAPSHOT.{stream}", json.dumps(req).encode(), timeout=10)).data
    )
    if "error" in reply:
        raise RuntimeError(f"snapshot {stream}: {reply['error']}")
    await asyncio.wait_for(done, 30)
    await sub.unsubscribe()
    return b"".join(chunks), reply


async def restore_stream(nc: Client, stream: str, blob: bytes, config: Json, state: Json) -> Json:
    """$JS.API.STREAM.RESTORE with a (changed) config: the stream must not exist."""
    req = json.dumps({"config": config, "state": state}).encode()
    reply = json.loads((await nc.request(f"$JS.API.STREAM.RESTORE.{stream}", req, timeout=10)).data)
    if "error" in reply:
        raise RuntimeError(f"restore {stream}: {reply['error']}")
    subject = reply["deliver_subject"]
    for i in range(0, len(blob), 128 * 1024):
        await nc.request(subject, blob[i : i + 128 * 1024], timeout=10)
    final: Json = json.loads((await nc.request(subject, b"", timeout=30)).data)
    if "error" in final:
        raise RuntimeError(f"restore {stream}: {final['error']}")
    return final


async def raise_by_restore(nc: Client, stream: str, max_consumers: int) -> Json:
    """Snapshot, delete, restore with max_consumers changed; returns the restored stream info."""
    blob, snap = await snapshot_stream(nc, stream)
    config = dict(snap["config"], max_consumers=max_consumers)
    await nc.jetstream().delete_stream(stream)
    return await restore_stream(nc, stream, blob, config, snap["state"])


async def phase_restore(url: str, raise_to: int, wait: float) -> Json:
    """On a bucket with a small explicit limit and an open watch: raise it by restore."""
    out: Json = {}
    nc = await connect(url)
    js = nc.jetstream()
    try:
        await js.add_stream(kv_stream_config("rst", max_consumers=2))
        kv = await js.key_value("rst")
        for i in range(20):
            await kv.put(f"peers.{i}", b"v%d" % i)
        before = await js.stream_info("KV_rst")
        watcher: Any = await kv.watch("peers.*")  # KeyWatcher: untyped in nats-py
        while await watcher.updates(timeout=5) is not None:
            pass
        t0 = time.monotonic()
        info = await raise_by_restore(nc, "KV_rst", raise_to)
        out["restore took ms"] = round((time.monotonic() - t0) * 1000, 1)
        after = await js.stream_info("KV_rst")
        out["max_consumers after"] = after.config.max_consumers
        b, a = before.state, after.state
        out["messages / last_seq kept"] = f"{b.messages}/{b.last_seq} -> {a.messages}/{a.last_seq}"
        out["created kept"] = before.created == after.created
        out["restore response type"] = info.get("type")
        rev = await kv.put("peers.new", b"after")
        got = None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and got is None:
            try:
                e = await watcher.updates(timeout=1)
                if e is not None and e.key == "peers.new":
                    got = time.monotonic() - t0
            except nats.errors.TimeoutError:
                pass
        out[f"open watch got the next put (rev {rev})"] = (
            f"after {got:.1f} s" if got else f"no (waited {wait:g} s)"
        )
    finally:
        await js.delete_stream("KV_rst")
        await nc.close()
    return out


# Phase: the fleet of watchers (worker processes)


class Fleet:
    """--procs watcher processes, each a `--role watcher`, driven by JSON lines on stdin/stdout."""

    def __init__(self, url: str, procs: int, per_conn: int) -> None:
        self.url, self.nprocs, self.per_conn = url, procs, per_conn
        self.procs: list[asyncio.subprocess.Process] = []
        self.total = 0

    async def start(self) -> None:
        for _ in range(self.nprocs):
            p = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--role",
                "watcher",
                "--url",
                self.url,
                "--per-conn",
                str(self.per_conn),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
            self.procs.append(p)

    async def call(self, cmd: Json, per_proc: list[Json] | None = None, timeout: float = 600) -> list[Json]:
        return await ask_each(self.procs, cmd, per_proc, timeout, who="nats_probe")

    async def grow_to(self, n: int) -> list[Json]:
        add = n - self.total
        shares = [add // self.nprocs + (1 if i < add % self.nprocs else 0) for i in range(self.nprocs)]
        self.total = n
        return await self.call({"cmd": "add"}, [{"n": s} for s in shares])

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    async def quit(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def watcher_role(url: str, per_conn: int) -> None:
    """A watcher process: commands on stdin, one JSON reply line each on stdout."""
    conns: list[Client] = []
    kvs: list[KeyValue] = []
    watchers: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    state: Json = {"entries": 0, "armed": None, "times": []}

    async def follow(w: Any) -> None:
        async for e in w:
            if e is None:
                continue
            state["entries"] += 1
            if e.key == state["armed"]:
                state["times"].append((e.value.decode(), time.monotonic()))

    async def add(n: int) -> Json:
        t0 = time.monotonic()
        need = math.ceil((len(watchers) + n) / per_conn) - len(conns)
        for _ in range(max(0, need)):
            nc = await connect(url, pending_size=64 * 1024 * 1024)
            conns.append(nc)
            kvs.append(await nc.jetstream().key_value(BUCKET))
        errors: list[str] = []
        for start in range(0, n, 16):
            idx = range(len(watchers), len(watchers) + min(16, n - start))
            batch = [kvs[i // per_conn].watch("peers.*") for i in idx]
            for r in await asyncio.gather(*batch, return_exceptions=True):
                if isinstance(r, BaseException):
                    errors.append(describe(r))
                    continue
                watchers.append(r)
                tasks.append(asyncio.create_task(follow(r)))
        return {"added": n - len(errors), "seconds": time.monotonic() - t0, "errors": errors[:3]}

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        reply: Json = {}
        if cmd["cmd"] == "add":
            reply = await add(cmd["n"])
        elif cmd["cmd"] == "stats":
            reply = {
                "in_msgs": sum(c.stats["in_msgs"] for c in conns),
                "entries": state["entries"],
                "watchers": len(watchers),
            }
        elif cmd["cmd"] == "arm":
            state["armed"], state["times"] = cmd["key"], []
            reply = {"ok": True}
        elif cmd["cmd"] == "collect":
            reply = {"times": state["times"]}
        elif cmd["cmd"] == "stop":
            names = [w._sub._consumer for w in watchers]
            for w in watchers:
                await w.stop()
            reply = {"names": names}
        elif cmd["cmd"] == "delete":
            js = conns[0].jetstream()
            t0 = time.monotonic()
            ok = sum([bool(await js.delete_consumer(f"KV_{BUCKET}", name)) for name in cmd["names"]])
            reply = {"deleted": ok, "seconds": time.monotonic() - t0}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# Phase: load from a separate process


async def load_role(url: str, op: str, rate: float, seconds: float) -> None:
    """Run one operation at a fixed rate; print "go" at the start and the results at the end."""
    nc = await connect(url)
    js = nc.jetstream()
    kv = await js.key_value(BUCKET)
    other = await js.key_value(ALIVE_BUCKET)
    subject = f"$KV.{BUCKET}.alive.self"
    payload = b'{"t":"2026-01-01T00:00:00Z","ok":true,"seen":17}'
    ops: dict[str, Callable[[int], Awaitable[Any]]] = {
        "get": lambda i: js.get_msg(STREAM, subject=subject, direct=True),
        "getapi": lambda i: js.get_msg(STREAM, subject=subject, direct=False),
        "put": lambda i: kv.put(f"alive.{i % ALIVE_KEYS}", payload),
        "putother": lambda i: other.put(f"alive.{i % ALIVE_KEYS}", payload),
        "info": lambda i: kv.status(),
    }
    fn = ops[op]
    lat: list[float] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        t = time.monotonic()
        try:
            await fn(i)
            lat.append(time.monotonic() - t)
        except Exception as e:  # reported in the results, not raised
            errors.append(describe(e))
        finally:
            sem.release()

    cpu0 = time.process_time()
    print(json.dumps({"event": "go"}), flush=True)
    t0 = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    i = 0
    while (now := time.monotonic()) - t0 < seconds:
        while i < int((now - t0) * rate) + 1:
            await sem.acquire()
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    await asyncio.gather(*pending)
    dt = time.monotonic() - t0
    print(
        json.dumps(
            {
                "event": "done",
                "ops": len(lat),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "seconds": dt,
                "p50_ms": pct(lat, 50) * 1000,
                "p99_ms": pct(lat, 99) * 1000,
                "cpu": time.process_time() - cpu0,
            }
        ),
        flush=True,
    )
    await nc.close()


async def run_load(srv: Server, op: str, rate: float, seconds: float) -> Json:
    """One load process; the server's CPU from its "go" to its "done"."""
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--role",
        "load",
        "--url",
        srv.url,
        "--op",
        op,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert p.stdout is not None
    await p.stdout.readline()  # go
    c0, t0 = cpu_seconds(srv.pid), time.monotonic()
    done = json.loads(await p.stdout.readline())
    c1, t1 = cpu_seconds(srv.pid), time.monotonic()
    await p.wait()
    return dict(done, server_cpu=c1 - c0, wall=t1 - t0)


# Measuring the server


async def quiesce(srv: Server, idle_rate: float, limit: float = 120.0) -> float:
    """Wait until the server is back to its idle CPU (work queued by a load drains); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = cpu_seconds(srv.pid)
        await asyncio.sleep(1.0)
        if cpu_seconds(srv.pid) - c0 <= max(2 * idle_rate, idle_rate + 0.02):
            break
    return time.monotonic() - t0


async def measured_load(
    srv: Server, fleet: Fleet, op: str, rate: float, seconds: float, idle_rate: float
) -> Json:
    """run_load, with server µs per operation above idle and the entries watchers got meanwhile.

    Low rates run three times as long: their cost is near the noise of the idle heartbeats."""
    e0 = sum(r["entries"] for r in await fleet.call({"cmd": "stats"}))
    r = await run_load(srv, op, rate, seconds * (3 if rate <= 100 else 1))
    e1 = sum(r2["entries"] for r2 in await fleet.call({"cmd": "stats"}))
    r["us_per_op"] = 1e6 * (r["server_cpu"] - idle_rate * r["wall"]) / max(1, r["ops"])
    r["server_pct"] = 100 * r["server_cpu"] / r["wall"]
    r["delivered_to_watchers"] = e1 - e0
    r["drain_s"] = await quiesce(srv, idle_rate)
    return r


async def measure_idle(srv: Server, fleet: Fleet, seconds: float) -> Json:
    s0 = sum(r["in_msgs"] for r in await fleet.call({"cmd": "stats"}))
    c0, w0, t0 = cpu_seconds(srv.pid), fleet.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, w1, t1 = cpu_seconds(srv.pid), fleet.cpu_seconds(), time.monotonic()
    stats = await fleet.call({"cmd": "stats"})
    dt = t1 - t0
    return {
        "server_pct": 100 * (c1 - c0) / dt,
        "server_cpu_per_s": (c1 - c0) / dt,
        "watchers_pct": 100 * (w1 - w0) / dt,
        "msgs_per_watcher_s": (sum(r["in_msgs"] for r in stats) - s0) / max(1, fleet.total) / dt,
        "rss_mib": rss_mib(srv.pid),
    }


async def phase_fanout(srv: Server, fleet: Fleet, kv: KeyValue, puts: int, idle_rate: float) -> Json:
    """puts writes to peers.lat, 1 s apart; each watcher's receive time minus the send time."""
    await fleet.call({"cmd": "arm", "key": "peers.lat"})
    sent: dict[str, float] = {}
    c0, t0 = cpu_seconds(srv.pid), time.monotonic()
    for i in range(puts):
        sent[str(i)] = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process here
        await kv.put("peers.lat", str(i).encode())
        await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)
    server_ms = 1000 * (cpu_seconds(srv.pid) - c0 - idle_rate * (time.monotonic() - t0)) / puts
    by_put: dict[str, list[float]] = {}
    for r in await fleet.call({"cmd": "collect"}):
        for v, t in r["times"]:
            by_put.setdefault(v, []).append((t - sent[v]) * 1000)
    lat = [x for xs in by_put.values() for x in xs]
    return {
        "server_ms_per_put": server_ms,
        "deliveries": f"{len(lat)}/{puts * fleet.total}",
        "first_ms_median": pct([min(xs) for xs in by_put.values()], 50),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "all_reached_ms_median": pct([max(xs) for xs in by_put.values()], 50),
        "all_reached_ms_max": max((max(xs) for xs in by_put.values()), default=float("nan")),
    }


async def phase_cleanup(fleet: Fleet, js: JetStreamContext) -> Json:
    """Each process stops its watchers, then deletes their consumers one by one."""
    before = await consumer_count(js, STREAM)
    stopped = await fleet.call({"cmd": "stop"})
    await asyncio.sleep(2.0)
    after_stop = await consumer_count(js, STREAM)
    deleted = await fleet.call({"cmd": "delete"}, [{"names": r["names"]} for r in stopped])
    secs = max(r["seconds"] for r in deleted)
    return {
        "consumers before stop": before,
        "2 s after watcher.stop()": after_stop,
        "after js.delete_consumer": await consumer_count(js, STREAM),
        "delete all, wall s": round(secs, 2),
    }


async def linger_child_role(url: str) -> None:
    """Two watches (default and inactive_threshold=5), print their consumers, wait to be killed."""
    nc = await connect(url)
    kv = await nc.jetstream().key_value("lng")
    default: Any = await kv.watch("peers.*")
    short: Any = await kv.watch("peers.*", inactive_threshold=5)
    print(json.dumps([default._sub._consumer, short._sub._consumer]), flush=True)
    await asyncio.sleep(3600)


async def phase_linger(url: str, limit: float) -> Json:
    """How long a watch's consumer stays on the server after stop(), SIGKILL or a reset."""
    out: Json = {}
    nc = await connect(url)
    js = nc.jetstream()
    try:
        await js.add_stream(kv_stream_config("lng", max_consumers=-1))
        kv = await js.key_value("lng")
        # KeyWatcher is untyped in nats-py
        w_default: Any = await kv.watch("peers.*")
        w_short: Any = await kv.watch("peers.*", inactive_threshold=5)
        w_delete: Any = await kv.watch("peers.*")
        w_reset: Any = await kv.watch("peers.*", inactive_threshold=5)
        info = await w_short._sub.consumer_info()
        out["kv.watch inactive_threshold default / given"] = (
            f"{(await w_default._sub.consumer_info()).config.inactive_threshold} / "
            f"{info.config.inactive_threshold} s"
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "linger-child", "--url", url, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        killed_default, killed_short = json.loads(await child.stdout.readline())
        track = {
            "stop(), default": w_default._sub._consumer,
            "stop(), inactive_threshold=5": w_short._sub._consumer,
            "SIGKILL, default": killed_default,
            "SIGKILL, inactive_threshold=5": killed_short,
            "old consumer after a reset, inactive_threshold=5": w_reset._sub._consumer,
            "stop() + js.delete_consumer": w_delete._sub._consumer,
        }
        t0 = time.monotonic()
        await w_default.stop()
        await w_short.stop()
        name = w_delete._sub._consumer
        await w_delete.stop()
        await js.delete_consumer("KV_lng", name)
        child.send_signal(signal.SIGKILL)
        await child.wait()
        jsi = w_reset._sub._sub._jsi  # what nats-py does after missed heartbeats or a gap
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        gone: dict[str, float] = {}
        while len(gone) < len(track) and time.monotonic() - t0 < limit:
            reply = await nc.request("$JS.API.CONSUMER.NAMES.KV_lng", b"{}", timeout=5)
            present = set(json.loads(reply.data).get("consumers") or [])
            for what, consumer in track.items():
                if what not in gone and consumer not in present:
                    gone[what] = time.monotonic() - t0
            await asyncio.sleep(0.5)
        for what in track:
            out[f"consumer gone: {what}"] = f"{gone[what]:.1f} s" if what in gone else f"> {limit:g} s"
        await w_reset.stop()
    finally:
        await js.delete_stream("KV_lng")
        await nc.close()
    return out


async def phase_missing(url: str, wait: float) -> Json:
    """A watch whose bucket is deleted and not recreated: what reaches the error callback."""
    errors: list[str] = []
    t0 = time.monotonic()

    async def on_error(e: Exception) -> None:
        errors.append(f"{time.monotonic() - t0:.0f} s {describe(e)}")

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
    js = nc.jetstream()
    try:
        await js.add_stream(kv_stream_config("gone", max_consumers=-1))
        watcher: Any = await (await js.key_value("gone")).watch("peers.*")
        await watcher.updates(timeout=5)
        t0 = time.monotonic()
        await js.delete_stream("KV_gone")
        await asyncio.sleep(wait)
        await watcher.stop()
    finally:
        await nc.close()
    return {"error_cb after the bucket was deleted": "; ".join(errors[:2]) or "nothing"}


async def phase_misc(url: str, recreate_wait: float) -> Json:
    """client_ip; the server's time; a deleted and recreated bucket."""
    out: Json = {}
    nc = await connect(url)
    js = nc.jetstream()
    try:
        out["client_ip (nc.client_ip)"] = nc.client_ip
        out["INFO has client_ip"] = "client_ip" in nc._server_info
        await js.add_stream(kv_stream_config("tm", max_consumers=-1))
        kv = await js.key_value("tm")
        rtts, offsets = [], []
        for _ in range(50):
            t0 = time.time()
            seq = await kv.put("alive.self", b"x")
            msg = await js.get_msg("KV_tm", seq=seq, direct=True)
            t1 = time.time()
            rtts.append((t1 - t0) * 1000)
            assert msg.time is not None
            offsets.append((msg.time.timestamp() - (t0 + t1) / 2) * 1000)
        out["put + direct get by seq p50 ms"] = round(pct(rtts, 50), 3)
        out["server ts - local midpoint p50 ms"] = round(pct(offsets, 50), 3)
        raw = json.loads((await nc.request("$JS.API.STREAM.INFO.KV_tm", b"", timeout=5)).data)
        out["stream info carries ts"] = raw.get("ts", "no")

        before = await js.stream_info("KV_tm")
        watcher: Any = await kv.watch("peers.*")  # KeyWatcher: untyped in nats-py
        await watcher.updates(timeout=5)
        await kv.put("peers.a", b"1")
        await watcher.updates(timeout=5)
        jsi = watcher._sub._sub._jsi
        old_consumer, old_sseq = watcher._sub._consumer, jsi._sseq
        await js.delete_stream("KV_tm")
        await js.add_stream(kv_stream_config("tm", max_consumers=-1))
        t0 = time.monotonic()
        seq = await kv.put("peers.b", b"2")
        after = await js.stream_info("KV_tm")
        out["recreated: first put seq"] = seq
        out["recreated: created changed"] = before.created != after.created
        got = None
        while time.monotonic() - t0 < recreate_wait and got is None:
            try:
                e = await watcher.updates(timeout=1)
                if e is not None and e.key == "peers.b":
                    got = time.monotonic() - t0
            except nats.errors.TimeoutError:
                pass
        out["old watch got the new put"] = f"after {got:.1f} s" if got else f"no (waited {recreate_wait:g} s)"
        out["old watch: consumer renamed (reset)"] = watcher._sub._consumer != old_consumer
        out["old watch: its sseq vs new last_seq"] = f"{jsi._sseq} vs {after.state.last_seq} (was {old_sseq})"
        await watcher.stop()
        await js.delete_stream("KV_tm")
    finally:
        await nc.close()
    return out


# One server


async def probe(binary: str, args: argparse.Namespace) -> Json:
    srv = Server(binary, args.js_conf).start()
    fleet: Fleet | None = None
    res: Json = {"server": srv.version, "binary": binary, "js_conf": args.js_conf}
    try:
        print(f"== {srv.version} ({binary}) on {srv.url}", flush=True)
        res["limits"] = await phase_limits(srv.url, args.limit_probe, args.max_consumers)
        print("   limits done", flush=True)
        res["restore"], res["misc"], res["linger"], missing = await asyncio.gather(
            phase_restore(srv.url, args.max_consumers, args.recreate_wait),
            phase_misc(srv.url, args.recreate_wait),
            phase_linger(srv.url, args.linger),
            phase_missing(srv.url, args.recreate_wait),
        )
        res["misc"].update(missing)
        print("   restore, misc, linger done", flush=True)
        if args.no_fleet:
            return res

        nc = await connect(srv.url)
        js = nc.jetstream()
        await js.add_stream(kv_stream_config(BUCKET, args.max_consumers))
        await js.add_stream(kv_stream_config(ALIVE_BUCKET, args.max_consumers))
        kv = await js.key_value(BUCKET)
        for i in range(args.keys):
            await kv.put(f"peers.n{i}", b'{"name":"n%d"}' % i)
        await kv.put("alive.self", b"{}")
        for b in (kv, await js.key_value(ALIVE_BUCKET)):
            for _ in range(HISTORY):
                await asyncio.gather(*(b.put(f"alive.{i}", b"{}") for i in range(ALIVE_KEYS)))
        res["bucket max_consumers"] = (await js.stream_info(STREAM)).config.max_consumers

        fleet = Fleet(srv.url, args.procs, args.per_conn)
        await fleet.start()
        res["levels"] = {}
        levels = sorted({lv for lv in args.levels if lv < args.watchers} | {0, args.watchers})
        for level in levels:
            step: Json = {}
            if level:
                c0, t0 = cpu_seconds(srv.pid), time.monotonic()
                replies = await fleet.grow_to(level)
                errors = [e for r in replies for e in r["errors"]]
                step["grow"] = {
                    "seconds": time.monotonic() - t0,
                    "server_cpu_s": cpu_seconds(srv.pid) - c0,
                    "accepted": await consumer_count(js, STREAM),
                    "error": errors[0] if errors else None,
                }
                await asyncio.sleep(args.settle)
            step["idle"] = await measure_idle(srv, fleet, args.idle)
            idle_rate = step["idle"]["server_cpu_per_s"]
            # Puts to keys nobody watches, in the watched bucket and in a second one.
            step["put"] = await measured_load(srv, fleet, "put", 1000, args.load, idle_rate)
            step["putother"] = await measured_load(srv, fleet, "putother", 1000, args.load, idle_rate)
            res["levels"][level] = step
            print(
                f"   {level} watchers: idle {step['idle']['server_pct']:.1f} % of a core, put "
                f"{step['put']['us_per_op']:.0f} µs, other bucket {step['putother']['us_per_op']:.0f} µs",
                flush=True,
            )

        top = res["levels"][args.watchers]
        idle_rate = top["idle"]["server_cpu_per_s"]
        res["load"] = {"put 1000/s": top["put"], "putother 1000/s": top["putother"]}
        for op, rate in args.loads:
            if f"{op} {rate}/s" not in res["load"]:
                res["load"][f"{op} {rate}/s"] = await measured_load(
                    srv, fleet, op, rate, args.load, idle_rate
                )
        res["fanout"] = await phase_fanout(srv, fleet, kv, args.fanout_puts, idle_rate)
        res["cleanup"] = await phase_cleanup(fleet, js)
        await nc.close()
    finally:
        if fleet is not None:
            await fleet.quit()
        srv.stop()
    return res


# Output


def table(res: Json, args: argparse.Namespace) -> str:
    rows: list[tuple[str, str]] = []

    def add(k: str, v: Any) -> None:
        rows.append((k, f"{v:.3g}" if isinstance(v, float) else str(v)))

    add("server", res["server"] + (f" with jetstream {{ {res['js_conf']} }}" if res["js_conf"] else ""))
    for section in ("limits", "restore", "misc", "linger"):
        for k, v in res[section].items():
            add(f"{section}: {k}", v)
    if "levels" not in res:
        return "\n".join(f"{k:<{max(len(k) for k, _ in rows)}}  {v}" for k, v in rows)
    add("bucket (explicit stream) max_consumers", res["bucket max_consumers"])
    for level, step in res["levels"].items():
        if "grow" in step:
            g = step["grow"]
            add(
                f"{level} watchers: grow wall s / server CPU s / consumers",
                f"{g['seconds']:.1f} / {g['server_cpu_s']:.1f} / {g['accepted']}",
            )
            if g["error"]:
                add(f"{level} watchers: grow error", g["error"])
        i, p = step["idle"], step["put"]
        add(f"{level} watchers: idle server % core / RSS MiB", f"{i['server_pct']:.2f} / {i['rss_mib']:.0f}")
        add(
            f"{level} watchers: msgs/s per watcher / watcher procs % core",
            f"{i['msgs_per_watcher_s']:.3f} / {i['watchers_pct']:.1f}",
        )
        add(
            f"{level} watchers: put alive.* 1000/s server µs/op, same / other bucket",
            f"{p['us_per_op']:.0f} / {step['putother']['us_per_op']:.0f}",
        )
    for name, r in res["load"].items():
        add(
            f"load {name}: done/s, server % core, µs/op",
            f"{r['ops'] / r['wall']:.0f}, {r['server_pct']:.1f}, {r['us_per_op']:.0f}",
        )
        add(
            f"load {name}: rtt p50/p99 ms, loader % core, to watchers, drain s",
            f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f}, {100 * r['cpu'] / r['wall']:.0f}, "
            f"{r['delivered_to_watchers']}, {r['drain_s']:.0f}",
        )
        if r["errors"]:
            add(f"load {name}: errors", f"{r['errors']}: {r['first_error']}")
    f = res["fanout"]
    add(f"fan-out to {args.watchers} in {args.procs} procs: deliveries", f["deliveries"])
    add(
        "fan-out: first / p50 / p99 / all reached (median, max) ms",
        f"{f['first_ms_median']:.1f} / {f['p50_ms']:.1f} / {f['p99_ms']:.1f} / "
        f"{f['all_reached_ms_median']:.1f}, {f['all_reached_ms_max']:.1f}",
    )
    add("fan-out: server CPU ms per put", f"{f['server_ms_per_put']:.1f}")
    for k, v in res["cleanup"].items():
        add(f"cleanup: {k}", v)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def machine() -> str:
    cpu = cpu_model()
    return f"{os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}, nats-py {NATS_PY_VERSION}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", action="append", help="nats-server binary (repeat; default: 2.9 and 2.15)")
    ap.add_argument("--watchers", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=6, help="watcher processes")
    ap.add_argument("--per-conn", type=int, default=1, help="watchers per connection")
    ap.add_argument(
        "--max-consumers", type=int, default=10000, help="for the explicit stream and update_stream"
    )
    ap.add_argument(
        "--limit-probe", type=int, default=1000, help="watch a create_key_value bucket this many + 1 times"
    )
    ap.add_argument(
        "--levels",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[300, 1000],
        help="also measure idle CPU and puts at these watcher counts (and at 0)",
    )
    ap.add_argument(
        "--loads",
        type=lambda v: [(op, int(r)) for op, r in (x.split(":") for x in v.split(","))],
        default=LOADS,
        help=f"op:rate,... at --watchers (ops: get getapi put putother info; default {LOADS})",
    )
    ap.add_argument("--keys", type=int, default=10, help="peers.* entries in the bucket")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds per idle window")
    ap.add_argument("--load", type=float, default=10.0, help="seconds per load window")
    ap.add_argument("--fanout-puts", type=int, default=10)
    ap.add_argument(
        "--recreate-wait", type=float, default=30.0, help="nats-py notices a lost consumer in 10-20 s"
    )
    ap.add_argument(
        "--js-conf",
        default="",
        help="added to the server's jetstream {} block, e.g. 'limits { default_max_consumers: -1 }' (2.15+)",
    )
    ap.add_argument(
        "--linger", type=float, default=30.0, help="watch for lingering consumers this long (310 sees 300 s)"
    )
    ap.add_argument("--no-fleet", action="store_true", help="only limits, restore, misc and linger")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--role", choices=("watcher", "load", "linger-child"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--op", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "watcher":
        asyncio.run(watcher_role(args.url, args.per_conn))
        return
    if args.role == "load":
        asyncio.run(load_role(args.url, args.op, args.rate, args.seconds))
        return
    if args.role == "linger-child":
        asyncio.run(linger_child_role(args.url))
        return

    servers = args.server or [s for s in DEFAULT_SERVERS if Path(s).is_file()]
    print(
        f"machine: {machine()}; {args.watchers} watchers in {args.procs} processes, "
        f"{args.per_conn} per connection",
        flush=True,
    )
    results = []
    for binary in servers:
        res = asyncio.run(probe(binary, args))
        results.append(res)
        print(table(res, args), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
