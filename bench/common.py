"""Shared machinery for the benchmarks: a throwaway netns, nats-server, a real agent, floors.

Every benchmark runs ONE real `ikto agent` subprocess with ONE real wireguard-go interface
inside a network namespace this process creates and enters (setns), so nats-server on the
namespace's loopback, the agent, wireguard-go and our `wg` probes all share it. The
interface gets a unique name: /run/wireguard/<dev>.sock is shared by every namespace.
Everything started here is stopped by pid and the namespace deleted, even on failure.
nats-server, the namespace and every command go through ikto_lab (the lab's launcher,
namespace helper and runner), like the lab and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nats  # noqa: E402

from ikto import ipam, keys  # noqa: E402
from ikto.config import load_config, write_config  # noqa: E402
from ikto.store import Store  # noqa: E402
from ikto_lab import netns as lab_netns  # noqa: E402
from ikto_lab import process, shell  # noqa: E402
from ikto_lab.nats import NatsServer, find_binary  # noqa: E402

RESULTS = Path(os.environ.get("BENCH_RESULTS") or REPO / "bench" / "results")
# The agent's persistent keepalive, and the floors' (they must do the same work). Default: the
# agent's default. BENCH_KEEPALIVE=0: synthetic endpoints never answer, so with keepalives on
# wireguard-go keeps retrying handshakes to all N peers (~40 % CPU at 10k).
KEEPALIVE = int(os.environ.get("BENCH_KEEPALIVE", "25"))

BUCKET = "ikto-bench"
SELF_SUBNET = "fd10:ffff::"


def ikto_argv() -> list[str]:
    return [sys.executable, "-m", "ikto"]


# Statistics


def pct(xs: list[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, float]:
    """p50/p99/min/max/n of a sample list (same unit as the input)."""
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs), "p50": round(pct(xs, 50), 3), "p99": round(pct(xs, 99), 3),
        "min": round(min(xs), 3), "max": round(max(xs), 3),
    }


# Synthetic peers


@dataclass(frozen=True)
class SynthPeer:
    index: int
    public_key: str
    allowed_ip: str
    advertise: str
    key: str

    def entry(self, advertise: str | None = None) -> bytes:
        return json.dumps({
            "name": f"b{self.index}", "public_key": self.public_key,
            "advertise_address": advertise or self.advertise, "allowed_ip": self.allowed_ip,
            "wg_port": 51820,
        }).encode()


def random_public_key() -> str:
    raw = bytearray(os.urandom(keys.KEY_LEN))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return keys.encode_key(bytes(raw))


_ADV_BASE = int(IPv4Address("198.18.0.0"))


def synth_peer(i: int) -> SynthPeer:
    """Peer number i (0-based): subnet fd10:<i+1>::/48, endpoint in 198.18.0.0/15."""
    if not 0 <= i < 0xFFFE:
        raise ValueError("at most 65534 synthetic peers")
    net = ip_network(f"fd10:{i + 1:x}::/48")
    adv = str(IPv4Address(_ADV_BASE + 1 + i))
    return SynthPeer(i, random_public_key(), str(net), adv, ipam.peer_key(net))


# Namespace + processes


def run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    """stdout of argv, run by the lab's runner (ikto_lab.shell.CommandError if it fails and check)."""
    return shell.run(argv, input=stdin, check=check).stdout


@contextlib.contextmanager
def netns(tag: str) -> Iterator[str]:
    """Create a netns, move this process's (main) thread into it, yield its name; undo all.

    Call before any thread exists (threads inherit the creating thread's namespace).
    """
    name = f"ikb-{tag}-{os.getpid()}"
    lab_netns.add(name)
    try:
        with lab_netns.entered(name):
            yield name
    finally:
        # Kill whatever still runs in it (only processes this benchmark started there).
        process.signal_pids([p for p in lab_netns.pids(name) if p != os.getpid()], signal.SIGKILL)
        lab_netns.delete(name)


_LOG_TIME = re.compile(r"^time=(\S+)")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_logfmt(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _FIELD.findall(line)}


@dataclass
class LogLine:
    arrived: float  # time.time() when our reader thread got it
    logged: float  # the agent's own timestamp (ms resolution)
    fields: dict[str, str]


class AgentProc:
    """A real `ikto agent` subprocess; its logfmt stderr is read live by a thread."""

    def __init__(self, workdir: Path, nats_url: str, dev: str, log_level: str = "info") -> None:
        self.workdir = workdir
        self.dev = dev
        key = workdir / "private.key"
        keys.write_private_key(key)
        self.config = load_config(
            None, name="bench", advertise_address="198.19.255.254", private_address=SELF_SUBNET,
            private_key_path=key, nats_url=nats_url, nats_kv=BUCKET, wg_dev_name=dev,
            admin_socket=workdir / "ikto.sock", config_dir=workdir / "wg", log_level=log_level,
            address_pinned=True,
            persistent_keepalive=KEEPALIVE,
        )
        self.config_path = workdir / "ikto.json"
        write_config(self.config, self.config_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[LogLine] = []
        self._cond = threading.Condition()
        self.started_at = 0.0

    @property
    def socket(self) -> Path:
        return self.config.admin_socket

    def start(self) -> None:
        self.lines = []
        self.started_at = time.time()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IKTO_")}
        # BENCH_IKTO_SRC=<dir holding a patched ikto/>: run that agent instead (before/after).
        src = os.environ.get("BENCH_IKTO_SRC") or str(REPO)
        env["PYTHONPATH"] = src
        self.proc = subprocess.Popen(
            [*ikto_argv(), "agent", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=src,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with (self.workdir / "agent.log").open("ab") as out:
            for raw in proc.stderr:
                now = time.time()
                out.write(raw)
                line = raw.decode("utf-8", "replace")
                m = _LOG_TIME.match(line)
                logged = now
                if m:
                    with contextlib.suppress(ValueError):
                        logged = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                with self._cond:
                    self.lines.append(LogLine(now, logged, parse_logfmt(line)))
                    self._cond.notify_all()

    def wait_line(self, pred: Any, start: int = 0, timeout: float = 60.0) -> tuple[int, LogLine]:
        """The first log line from index `start` on for which pred(fields) is true."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i].fields):
                        return i, self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    tail = (self.workdir / "agent.log").read_text(errors="replace")[-2000:]
                    raise TimeoutError(f"agent log line not seen in {timeout} s; log tail:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def count_applied(self, start: int, msg_names: tuple[str, ...] = ("peer joined",)) -> int:
        """Peers applied according to log lines from `start` on (summary lines count `set`)."""
        n = 0
        with self._cond:
            for ln in self.lines[start:]:
                m = ln.fields.get("msg")
                if m in msg_names:
                    n += 1
                elif m == "applied peers":
                    n += int(ln.fields.get("set", 0))
        return n

    def wait_applied(self, start: int, want: int, timeout: float = 120.0,
                     msg_names: tuple[str, ...] = ("peer joined",)) -> LogLine:
        """Block until log lines from `start` on account for `want` applied peers; the last line."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                n = 0
                last = None
                for ln in self.lines[start:]:
                    m = ln.fields.get("msg")
                    if m in msg_names:
                        n += 1
                        last = ln
                    elif m == "applied peers":
                        n += int(ln.fields.get("set", 0))
                        last = ln
                if n >= want and last is not None:
                    return last
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    tail = (self.workdir / "agent.log").read_text(errors="replace")[-2000:]
                    raise TimeoutError(f"only {n}/{want} peers applied in {timeout} s; log tail:\n{tail}")
                self._cond.wait(min(left, 0.5))

    async def health(self) -> dict[str, Any]:
        from ikto.api import call

        health: dict[str, Any] = await asyncio.to_thread(call, self.socket, "GET", "/v1/health")
        return health

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def rss_mib(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wg_go_pid(dev: str) -> int | None:
    """The wireguard-go process serving dev (its argv is `wireguard-go <dev>`)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"wireguard-go") and dev.encode() in argv[1:]:
                return int(d.name)
    return None


def wg_peer_count(dev: str) -> int:
    return len(run(["wg", "show", dev, "peers"]).split())


def wg_dump_peers(dev: str) -> dict[str, tuple[str, str]]:
    """public key -> (endpoint, allowed ips) from `wg show <dev> dump`."""
    out = {}
    for ln in run(["wg", "show", dev, "dump"]).splitlines()[1:]:
        f = ln.split("\t")
        if len(f) == 8:
            out[f[0]] = (f[2], f[3])
    return out


def uapi_get(dev: str) -> bytes:
    """The whole device through wireguard-go's UAPI socket (no process spawned)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(f"/run/wireguard/{dev}.sock")
        s.sendall(b"get=1\n\n")
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
            if b.endswith(b"\n\n"):
                break
        return b"".join(chunks)


def uapi_has(blob: bytes, public_key: str, endpoint: str) -> bool:
    hexkey = keys.decode_key(public_key).hex().encode()
    i = blob.find(b"public_key=" + hexkey + b"\n")
    if i < 0:
        return False
    j = blob.find(b"public_key=", i + 10)
    return (b"endpoint=" + endpoint.encode() + b"\n") in blob[i: j if j > 0 else len(blob)]


# Floors


def floor_wg_set(dev: str, samples: int = 20) -> list[float]:
    """ms of a bare `wg set <dev> peer K allowed-ips ... endpoint ...` via subprocess (peer removed after)."""
    out = []
    for i in range(samples):
        pk = random_public_key()
        t = time.perf_counter()
        run(["wg", "set", dev, "peer", pk, "allowed-ips", f"fd11:{i + 1:x}::/48",
             "endpoint", "198.19.0.1:51820", "persistent-keepalive", str(KEEPALIVE)])
        out.append((time.perf_counter() - t) * 1000)
        run(["wg", "set", dev, "peer", pk, "remove"])
    return out


def floor_wg_set_many(dev: str, n: int) -> float:
    """ms of one bare `wg set` adding n peers (removed after in one call)."""
    pks = [random_public_key() for _ in range(n)]
    args: list[str] = []
    for i, pk in enumerate(pks):
        args += ["peer", pk, "allowed-ips", f"fd11:{i + 1:x}::/48", "endpoint",
                 f"198.19.{i // 250}.{i % 250 + 1}:51820", "persistent-keepalive", str(KEEPALIVE)]
    t = time.perf_counter()
    run(["wg", "set", dev, *args])
    ms = (time.perf_counter() - t) * 1000
    rm: list[str] = []
    for pk in pks:
        rm += ["peer", pk, "remove"]
    run(["wg", "set", dev, *rm])
    return ms


async def floor_kv_notify(url: str, samples: int = 30) -> list[float]:
    """ms from a bare kv.put to a watcher's notification (two connections, same process)."""
    w_nc = await nats.connect(url)
    p_nc = await nats.connect(url)
    try:
        wkv = await w_nc.jetstream().key_value(BUCKET)
        pkv = await p_nc.jetstream().key_value(BUCKET)
        watcher: Any = await wkv.watch("floor.*")  # KeyWatcher: untyped in nats-py
        it = aiter(watcher)
        out = []
        async for e in watcher:  # drain the initial snapshot marker
            if e is None:
                break
        for i in range(samples):
            t = time.perf_counter()
            await pkv.put(f"floor.k{i % 3}", b"x" * 200)
            await anext(it)
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await watcher.stop()
        return out
    finally:
        await w_nc.close()
        await p_nc.close()


async def floor_snapshot(url: str) -> float:
    """ms for a bare watcher's initial snapshot of peers.* (`async for`, as the agent does)."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(BUCKET)
        t = time.perf_counter()
        w: Any = await kv.watch("peers.*")
        async for e in w:
            if e is None:
                break
        ms = (time.perf_counter() - t) * 1000
        with contextlib.suppress(Exception):
            await w.stop()
        return ms
    finally:
        await nc.close()


# The bucket


class Writer:
    """A raw nats-py client writing synthetic entries (the bucket made as the agent makes it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Any = None
        self.kv: Any = None

    async def open(self, agent_config: Any) -> None:
        store = await Store.connect(agent_config)  # creates the bucket with ikto's limits
        await store.open_bucket(BUCKET, create=True)
        await store.close()
        self.nc = await nats.connect(self.url)
        self.kv = await self.nc.jetstream().key_value(BUCKET)

    async def put_many(self, peers: list[SynthPeer], concurrency: int = 256) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(p: SynthPeer) -> None:
            async with sem:
                await self.kv.put(p.key, p.entry())

        await asyncio.gather(*(one(p) for p in peers))

    async def delete_many(self, peers: list[SynthPeer], concurrency: int = 256) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(p: SynthPeer) -> None:
            async with sem:
                await self.kv.delete(p.key)

        await asyncio.gather(*(one(p) for p in peers))

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


# Harness: one netns, nats-server, an agent


@dataclass
class Rig:
    ns: str
    dev: str
    workdir: Path
    nats: NatsServer
    agent: AgentProc
    writer: Writer
    peers: list[SynthPeer] = field(default_factory=list)

    async def seed(self, n: int) -> list[SynthPeer]:
        """Write n synthetic peers straight into the bucket (before the agent starts)."""
        self.peers = [synth_peer(i) for i in range(n)]
        await self.writer.put_many(self.peers)
        return self.peers


@contextlib.asynccontextmanager
async def rig_started(ns: str, workdir: Path, dev: str) -> Any:
    """nats-server + bucket writer + (not yet started) agent in the current namespace."""
    nproc = NatsServer.loopback(workdir / "nats")
    nproc.start()
    agent = AgentProc(workdir, nproc.url, dev)
    writer = Writer(nproc.url)
    try:
        await writer.open(agent.config)
        yield Rig(ns, dev, workdir, nproc, agent, writer)
    finally:
        await writer.close()
        agent.stop()
        with contextlib.suppress(Exception):
            run(["ip", "link", "del", "dev", dev], check=False)
        nproc.stop()


@contextlib.contextmanager
def throwaway_lab(tag: str, **lab_args: Any) -> Iterator[Any]:
    """An ikto_lab.NamespaceLab with its own state dir and namespace prefix, removed afterwards
    (lab_args: NamespaceLab's keyword arguments)."""
    from ikto_lab import NamespaceLab

    state = Path(tempfile.mkdtemp(prefix=f"ikto-bench-{tag}-"))
    lab = NamespaceLab(state_dir=state, name=f"ik{tag[:4]}{os.getpid() % 10000}", **lab_args)
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def sandbox(tag: str) -> Iterator[tuple[str, Path, str]]:
    """(netns name, temp workdir, unique interface name); everything removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ikto-bench-{tag}-"))
    dev = f"ikb{os.getpid() % 100000:x}"[:15]
    try:
        with netns(tag) as ns:
            yield ns, workdir, dev
    finally:
        if (workdir / "agent.log").exists():  # kept for a look after the run
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / "agent.log", RESULTS / f"{tag}-agent-last.log")
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(f"/run/wireguard/{dev}.sock").unlink()


# Output


async def ask_each(
    procs: list[asyncio.subprocess.Process],
    cmd: dict[str, Any],
    per_proc: list[dict[str, Any]] | None = None,
    timeout: float = 120.0,
    who: str = "bench",
) -> list[dict[str, Any]]:
    """Send one JSON line to each worker process (`cmd`, plus its own part of `per_proc`) and
    read one JSON line back from each, in order."""
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(json.dumps({**cmd, **(per_proc[i] if per_proc else {})}).encode() + b"\n")
        await p.stdin.drain()
    out = []
    for p in procs:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), timeout)
        if not line:
            raise SystemExit(f"{who}: a worker process died (its error is above)")
        out.append(json.loads(line))
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" if it does not say)."""
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("model name"):
            return ln.split(":", 1)[1].strip()
    return "?"


def machine() -> dict[str, Any]:
    def ver(argv: list[str]) -> str:
        try:
            return (run(argv, check=False) or "").strip().splitlines()[0]
        except (shell.LabError, IndexError):
            return "?"

    wgo = run(["dpkg-query", "-W", "-f=${Version}", "wireguard-go"], check=False).strip()
    wgt = run(["dpkg-query", "-W", "-f=${Version}", "wireguard-tools"], check=False).strip()
    return {
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(), "python": platform.python_version(),
        "nats_server": ver([str(find_binary()), "--version"]), "wireguard_go": wgo, "wireguard_tools": wgt,
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {"benchmark": name, "machine": machine(), "persistent_keepalive": KEEPALIVE, **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(data, indent=2) + "\n")
    return path


def report(
    name: str,
    title: str,
    header: list[str],
    rows: list[list[Any]],
    out: dict[str, Any],
    *,
    keepalive: bool = True,
) -> Path:
    """Print a benchmark's table under its title and save its JSON; the saved path."""
    print(f"{title} [persistent keepalive {KEEPALIVE or 'off'}]" if keepalive else title)
    print(table(rows, header))
    path = save(name, out)
    print(f"results: {path}")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def fmt(s: dict[str, float], unit: str = "ms") -> str:
    if not s.get("n"):
        return "-"
    return f"p50 {s['p50']:.1f} / p99 {s['p99']:.1f} {unit} (min {s['min']:.1f}, max {s['max']:.1f})"


def base_args(desc: str, peers: int, runs: int) -> Any:
    import argparse

    ap = argparse.ArgumentParser(description=desc)
    ap.add_argument("--peers", type=int, nargs="+", default=[peers],
                    help=f"mesh size(s) to run at (default {peers}); e.g. --peers 100 1000 10000")
    ap.add_argument("--runs", type=int, default=runs, help=f"repetitions per size (default {runs})")
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces, wireguard-go)")
