#!/usr/bin/env python3
"""P4: namespace lab, real agents: a node joins -> every other node has it and pings it.

Method. `ikto_lab.NamespaceLab` (its own state dir and namespace prefix, removed afterwards)
runs --peers real agents over wireguard-go and waits until the mesh converged. Per join a new
node is created (not started) on a subnet that no entry in the bucket holds and that no earlier
joiner had; every running member starts `ping -D -i 0.005 -c 1 -w 20 <that address>` in its own
namespace (replies carry epoch timestamps); then the joiner's agent starts.

t0 is the server's timestamp of the joiner's entry: the revision its "claimed address" line
names, read back from the bucket. Members can learn of the joiner no earlier than that. The
line's own time is not used: it is taken after the write's ack, when the joiner's event loop
gets to it, 0-200 ms late on this machine. A join whose pings were answered before t0, or whose
claimed address is not the pinged one, is not a sample: it is counted and reported.
(Before this, a random `ikto init` address could be one a member held: the members then pinged
that member, answered at once, ~0.8 s before the joiner moved elsewhere and logged its claim.)

Per member: first echo reply - t0, and from its own log the "peer joined" line for the joiner
(watch + `wg set`) - t0; per join: the slowest member. The joiner then leaves and is removed,
so every join meets a mesh of the same size.

Floor, measured in the same lab (medians summed): a KV put -> watch notification (ikto's own
watch, from a member's namespace), one `wg set` of one peer through `sh` (ikto.wg's runner, in
a process that imports the agent), one handshake + ping over a fresh tunnel between two bare
wireguard-go interfaces on the same underlay. That is the floor of one member on its own machine.
Here every member shares 2 cores, so the lab floor replaces the single `wg set` by every
member's `wg set` started at the same moment (ms until each is done): what the slowest member
of a join waits for at least on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c

TARGET = {"p50_ms": 40.0, "p99_ms": 150.0}  # at 10 agents; no worse than 2x that at 50
PING = ["ping", "-D", "-n", "-i", "0.005", "-c", "1", "-w", "20"]
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")
_TIME = re.compile(r"time=([\d.]+) ms")
FLOOR_PREFIX = "p4floor"


def first_reply(out: str) -> float | None:
    for ln in out.splitlines():
        m = _REPLY.match(ln)
        if m:
            return float(m.group(1))
    return None


def _log_time(fields: dict[str, str]) -> float:
    return datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def claimed(log_text: str) -> dict[str, Any] | None:
    """The last "claimed address" line of an agent log: its time, revision and allowed_ip."""
    found = None
    for ln in log_text.splitlines():
        if 'msg="claimed address"' in ln:
            f = c.parse_logfmt(ln)
            found = {"logged": _log_time(f), "revision": int(f["revision"]), "allowed_ip": f["allowed_ip"]}
    return found


def public_key_of(log_text: str) -> str | None:
    for ln in log_text.splitlines():
        if 'msg=starting' in ln:
            return c.parse_logfmt(ln).get("public_key")
    return None


def joined_at(log_text: str, public_key: str) -> tuple[float, float] | None:
    """(log time, wg call ms) of a member's "peer joined" line for public_key."""
    for ln in log_text.splitlines():
        if 'msg="peer joined"' in ln and public_key in ln:
            f = c.parse_logfmt(ln)
            return _log_time(f), float(f.get("ms", "nan"))
    return None


# Helpers run inside lab nodes (`--role ...`): the host cannot reach the lab's NATS.


async def role_bucket(url: str, bucket: str) -> None:
    """Answer JSON commands on stdin about the bucket, through ikto.store (as the agent does)."""
    from ikto.config import load_config
    from ikto.store import Store

    config = load_config(None, nats_url=url, nats_kv=bucket, name="p4-bench")
    store = await Store.connect(config, name="ikto-bench p4")
    await store.open_bucket(bucket, create=False)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        reply: dict[str, Any] = {}
        if cmd["cmd"] == "taken":
            subnets = []
            async with contextlib.aclosing(store.watch("peers.*")) as entries:
                async for e in entries:
                    if e is None:
                        break
                    if e.value is not None:
                        with contextlib.suppress(ValueError):
                            subnets.append(json.loads(e.value).get("allowed_ip"))
            reply = {"subnets": subnets}
        elif cmd["cmd"] == "stamp":
            t = await store.stamp(int(cmd["revision"]))
            reply = {"time": t.timestamp() if t is not None else None}
        elif cmd["cmd"] == "kv_floor":
            reply = {"ms": await kv_floor(store, config, int(cmd["samples"]))}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await store.close()


async def kv_floor(store: Any, config: Any, samples: int) -> list[float]:
    """ms from a put (one connection) to ikto's watch delivering it (another connection)."""
    from ikto.store import Store

    watcher = await Store.connect(config, name="ikto-bench p4 watcher")
    try:
        await watcher.open_bucket(config.nats_kv, create=False)
        out = []
        async with contextlib.aclosing(watcher.watch(f"{FLOOR_PREFIX}.*")) as entries:
            while await anext(entries) is not None:  # the snapshot
                pass
            for i in range(samples):
                t = time.perf_counter()
                await store.put(f"{FLOOR_PREFIX}.k{i % 3}", b"x" * 300)
                await anext(entries)
                out.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.02)
        return out
    finally:
        await watcher.close()


def role_wgset(dev: str, samples: int, start: float | None = None) -> dict[str, Any]:
    """ms of one `wg set` adding one peer through ikto.wg's runner (`sh`), in an agent-sized
    process: `samples` in a row, or (start: an epoch time) one a second from then on, as every
    member does at once when a node joins."""
    import ikto.agent  # noqa: F401  (the agent's imports: `sh` forks a process this size)
    from ikto.wg import Wg

    wg = Wg(dev)
    out = []
    for i in range(samples):
        pk = c.random_public_key()
        argv = ["wg", "set", dev, "peer", pk, "allowed-ips", f"10.254.{i}.0/24",
                "endpoint", "198.18.254.254:51820", "persistent-keepalive", "25"]
        if start is not None:
            time.sleep(max(0.0, start + i - time.time()))
        t = time.perf_counter()
        wg.run(argv)
        out.append((time.perf_counter() - t) * 1000)
        if start is not None:
            out[-1] = (time.time() - (start + i)) * 1000  # from the common start: waiting included
        wg.run(["wg", "set", dev, "peer", pk, "remove"])
        time.sleep(0.02)
    return {"ms": out, "rss_mib": round(c.rss_mib(os.getpid()), 1)}


def wgset_all_members(lab: Any, rounds: int) -> list[float]:
    """Every member runs one `wg set` through `sh` at the same moment, `rounds` times: ms from
    that moment until each is done. On this machine the members share 2 cores: this, not one
    `wg set` alone, is what the slowest member of a join waits for at least."""
    members = [m for m in lab.members() if lab.agent_running(m)]
    start = time.time() + 3 + 0.4 * len(members)  # every helper has imported the agent by then
    procs = [
        subprocess.Popen(lab.node_argv(m, _self_argv("--role", "wgset", "--dev", lab.config(m)["wg_dev_name"],
                                                     "--samples", str(rounds), "--at", str(start))),
                         stdout=subprocess.PIPE, text=True)
        for m in members
    ]
    out: list[float] = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        out += json.loads(stdout)["ms"]
    return out


def role_handshake(dev: str, peer: str, endpoint: str, address: str, samples: int) -> dict[str, Any]:
    """ms of the first ping over a fresh tunnel: the peer re-added without a keepalive, so the
    echo request itself starts the handshake and waits for it (ping's time includes it)."""
    out = []
    for _ in range(samples):
        subprocess.run(["wg", "set", dev, "peer", peer, "remove"], check=True)
        subprocess.run(["wg", "set", dev, "peer", peer, "allowed-ips", f"{address}/32", "endpoint", endpoint],
                       check=True)
        cp = subprocess.run(["ping", "-n", "-c", "1", "-W", "2", address], capture_output=True, text=True)
        m = _TIME.search(cp.stdout)
        if m:
            out.append(float(m.group(1)))
        time.sleep(0.1)
    return {"ms": out}


# The lab


class Helper:
    """A long-lived `--role bucket` process inside a lab node."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("p4: the bucket helper exited")
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _self_argv(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def bare_tunnel(lab: Any, state: Path) -> tuple[str, str, str, str, str]:
    """Two nodes without agents, each with a bare wireguard-go interface holding the other:
    (node a, its device, b's public key, b's endpoint, b's tunnel address)."""
    tag = os.getpid() % 1000
    ends = []
    for side, ip in (("a", "10.255.255.1"), ("b", "10.255.255.2")):
        node = lab.add_node(f"floor{side}", start=False)
        dev = f"ikf{tag}{side}"
        key = state / f"floor-{side}.key"
        key.write_text(c.run(["wg", "genkey"]))
        key.chmod(0o600)
        pub = c.run(["wg", "pubkey"], stdin=key.read_text()).strip()
        for argv in (["wireguard-go", dev], ["ip", "addr", "add", f"{ip}/30", "dev", dev],
                     ["ip", "link", "set", dev, "up"],
                     ["wg", "set", dev, "private-key", str(key), "listen-port", "51999"]):
            lab.exec(node, argv, check=True)
        ends.append((node, dev, pub, f"{lab.underlay(node)}:51999", ip))
    (a, adev, apub, _, aip), (b, bdev, _, _, _) = ends
    lab.exec(b, ["wg", "set", bdev, "peer", apub, "allowed-ips", f"{aip}/32"], check=True)
    return a, adev, ends[1][2], ends[1][3], ends[1][4]


def progress(msg: str) -> None:
    print(f"[p4 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


_NEIGH = [Path(f"/proc/sys/net/{v}/neigh/default/gc_thresh{i}") for v in ("ipv4", "ipv6") for i in (1, 2, 3)]


@contextlib.contextmanager
def neighbour_room(nodes: int) -> Any:
    """Room in the kernel's neighbour (ARP) table for a lab of this size, restored afterwards.

    That table is shared by every network namespace of the host, and gc_thresh3 (1,024 by
    default) caps it for all of them: a lab whose nodes all handshake with each other needs
    about (nodes + 3)^2 entries, so beyond ~30 nodes the kernel logs "neighbor table overflow",
    new nodes cannot resolve the NATS server for up to a minute and joins take 15-18 s
    (measured at 50 agents before this).
    """
    need = (nodes + 8) ** 2
    saved = {f: f.read_text().strip() for f in _NEIGH}
    try:
        for f in _NEIGH:
            i = int(f.name[-1])
            want = {1: int(saved[f]), 2: 2 * need, 3: 4 * need}[i]
            if want > int(saved[f]):
                f.write_text(f"{want}\n")
        yield
    finally:
        for f, v in saved.items():
            with contextlib.suppress(OSError):
                f.write_text(v + "\n")


def wait_underlay(lab: Any, nodes: list[str], timeout: float) -> float:
    """Wait until each node's underlay reaches the NATS server (ARP resolved); seconds taken."""
    t = time.monotonic()
    nats = lab.nats_servers()[0].address
    left = list(nodes)
    while left:
        left = [n for n in left if lab.exec(n, ["ping", "-n", "-c", "1", "-W", "1", nats]).returncode != 0]
        if left and time.monotonic() - t > timeout:
            raise RuntimeError(f"p4: {', '.join(left)} cannot reach NATS at {nats} after {timeout:g} s")
    return time.monotonic() - t


def free_subnet(taken: set[str], mesh: str, prefix: int) -> str:
    net = ip_network(mesh)
    while True:
        s = random.choice(list(net.subnets(new_prefix=prefix))[1:])
        if str(s) not in taken:
            return str(s)


def run_lab(nodes: int, runs: int) -> dict[str, Any]:
    from ikto_lab import NamespaceLab

    state = Path(tempfile.mkdtemp(prefix="ikto-bench-lab-"))
    lab = NamespaceLab(state_dir=state, name=f"ikb{os.getpid() % 10000}")
    per_member: list[float] = []
    per_join: list[float] = []
    member_applied: list[float] = []  # the member's "peer joined" line - t0
    wg_call_ms: list[float] = []  # the member's own wg call, as it logged it
    claim_line_late: list[float] = []  # the joiner's "claimed address" line - t0
    bad: list[str] = []
    misses = 0
    helper: Helper | None = None
    try:
        t = time.monotonic()
        lab.up(nodes)
        underlay_s = wait_underlay(lab, lab.nodes(), 180)
        lab.wait_converged(timeout=120 + 3 * nodes)
        up_s = time.monotonic() - t
        progress(f"{nodes} agents up and converged in {up_s:.0f} s (underlay: {underlay_s:.0f} s)")
        first = lab.members()[0]
        helper = Helper(lab.node_argv(first, _self_argv("--role", "bucket", "--url", lab.nats_url())))
        used: set[str] = set()
        st = lab.state
        for i in range(runs):
            taken = set(helper.call(cmd="taken")["subnets"]) | used
            subnet = free_subnet(taken, st.mesh_cidr, st.subnet_prefix)
            used.add(subnet)
            j = lab.add_node(f"j{i}", private_address=str(ip_network(subnet).network_address), start=False)
            addr = lab.config(j)["private_address"]
            wait_underlay(lab, [j], 60)
            running = [m for m in lab.members() if m != j and lab.agent_running(m)]
            logs_at = {m: lab.layout.agent_log(m).stat().st_size for m in running}
            pings = {
                m: subprocess.Popen(lab.node_argv(m, [*PING, addr]),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for m in running
            }
            time.sleep(0.2)  # the pings are running
            lab.start_agent(j)
            replies: dict[str, float] = {}
            for m, p in pings.items():
                out, _ = p.communicate(timeout=30)
                r = first_reply(out)
                if r is None:
                    misses += 1
                else:
                    replies[m] = r
            deadline = time.monotonic() + 10
            while (got := claimed(lab.layout.agent_log(j).read_text())) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{j} never logged 'claimed address':\n{lab.log_tail(j)}")
                time.sleep(0.1)
            t0 = helper.call(cmd="stamp", revision=got["revision"])["time"]
            if got["allowed_ip"] != subnet or t0 is None:
                bad.append(f"{j}: claimed {got['allowed_ip']} (pinged {subnet}), stamp {t0}")
            elif any(r < t0 for r in replies.values()):
                early = sum(r < t0 for r in replies.values())
                bad.append(f"{j}: {early} replies before its entry was written")
            else:
                lat = [(r - t0) * 1000 for r in replies.values()]
                per_member += lat
                if lat:
                    per_join.append(max(lat))
                claim_line_late.append((got["logged"] - t0) * 1000)
                pub = public_key_of(lab.layout.agent_log(j).read_text()) or ""
                for m in running:
                    with lab.layout.agent_log(m).open() as f:
                        f.seek(logs_at[m])
                        seen = joined_at(f.read(), pub)
                    if seen is not None:
                        member_applied.append((seen[0] - t0) * 1000)
                        wg_call_ms.append(seen[1])
            lab.leave_node(j)
            lab.remove_node(j)
            slowest = per_join[-1] if per_join else float("nan")
            progress(f"join {i + 1}/{runs}: slowest member {slowest:.0f} ms")
            time.sleep(0.5)
        # The floor, in the same lab.
        kv = helper.call(cmd="kv_floor", samples=30)["ms"]
        dev = lab.config(first)["wg_dev_name"]
        cp = lab.exec(first, _self_argv("--role", "wgset", "--dev", dev, "--samples", "20"), check=True)
        wgset = json.loads(cp.stdout)
        a, adev, bpub, bend, bip = bare_tunnel(lab, state)
        cp = lab.exec(a, _self_argv("--role", "handshake", "--dev", adev, "--peer", bpub, "--endpoint", bend,
                                    "--address", bip, "--samples", "15"), check=True)
        hs = json.loads(cp.stdout)["ms"]
        together = wgset_all_members(lab, 3)
        parts = {"kv_put_to_watch_ms": c.summary(kv), "wg_set_via_sh_ms": c.summary(wgset["ms"]),
                 "handshake_and_ping_ms": c.summary(hs), "wg_set_all_members_at_once_ms": c.summary(together)}
        floor_ms = sum(c.pct(xs, 50) for xs in (kv, wgset["ms"], hs))
        # This machine's floor for a join: every member's `wg set` at the same moment on 2 cores.
        lab_floor = {q: c.pct(kv, 50) + c.pct(together, q) + c.pct(hs, 50) for q in (50, 99)}
        agents_rss = [c.rss_mib(pid) for m in lab.members() if (pid := lab.agent_pid(m)) is not None]
        res: dict[str, Any] = {
            "nodes": nodes, "runs": runs, "lab_up_and_converged_s": round(up_s, 1),
            "joins_measured": len(per_join), "joins_not_counted": bad,
            "join_to_ping_ms_slowest_member": c.summary(per_join),
            "join_to_ping_ms_each_member": c.summary(per_member),
            "member_applied_ms": c.summary(member_applied),
            "member_wg_call_ms": c.summary(wg_call_ms),
            "claimed_line_after_entry_ms": c.summary(claim_line_late),
            "members_without_reply": misses,
            "floor": parts, "floor_ms": round(floor_ms, 2),
            "lab_floor_ms": {f"p{q}": round(v, 1) for q, v in lab_floor.items()},
            "wgset_helper_rss_mib": wgset["rss_mib"],
            "agent_rss_mib": c.summary(agents_rss),
        }
        p50 = res["join_to_ping_ms_each_member"].get("p50")
        res["ratio_p50"] = round(p50 / floor_ms, 1) if p50 is not None else None
        res["ratio_p50_lab_floor"] = round(p50 / lab_floor[50], 1) if p50 is not None else None
        return res
    finally:
        if helper is not None:
            helper.close()
        lab.down()
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args((__doc__ or "").splitlines()[0], 10, 5)
    ap.add_argument("--role", choices=("bucket", "wgset", "handshake"), help=argparse.SUPPRESS)
    for opt in ("--url", "--dev", "--peer", "--endpoint", "--address"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--at", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role == "bucket":
        asyncio.run(role_bucket(a.url, "ikto-mesh"))
        return {}
    if a.role == "wgset":
        print(json.dumps(role_wgset(a.dev, a.samples, a.at)))
        return {}
    if a.role == "handshake":
        print(json.dumps(role_handshake(a.dev, a.peer, a.endpoint, a.address, a.samples)))
        return {}
    c.require_root()
    results = []
    for n in a.peers:
        with neighbour_room(n):
            results.append(run_lab(n, a.runs))
    rows = []
    for r in results:
        f = r["floor"]
        target = TARGET if r["nodes"] <= 10 else {k: 2 * v for k, v in TARGET.items()}
        s = r["join_to_ping_ms_each_member"]
        verdict = "-" if not s.get("n") else (
            "pass" if s["p50"] <= target["p50_ms"] and s["p99"] <= target["p99_ms"] else "miss")
        rows.append([
            r["nodes"], c.fmt(s), c.fmt(r["join_to_ping_ms_slowest_member"]),
            f"{f['kv_put_to_watch_ms'].get('p50', 0):.1f} + {f['wg_set_via_sh_ms'].get('p50', 0):.1f} + "
            f"{f['handshake_and_ping_ms'].get('p50', 0):.1f} = {r['floor_ms']:.1f} ms",
            f"{r['ratio_p50']}x",
            f"p50 {r['lab_floor_ms']['p50']:.1f} / p99 {r['lab_floor_ms']['p99']:.1f} ms",
            f"{r['ratio_p50_lab_floor']}x",
            f"p50<={target['p50_ms']:.0f} p99<={target['p99_ms']:.0f}", verdict,
            r["members_without_reply"], len(r["joins_not_counted"]),
        ])
    out = {"target": TARGET, "results": results}
    title = "P4 lab: a node joins -> every member pings it (t0: the server's timestamp of its entry)"
    c.report("p4_lab", title,
             ["nodes", "per member", "slowest member per join", "floor: put->watch + wg set + handshake+ping",
              "ratio", "lab floor (all members' wg set at once)", "ratio", "target ms", "verdict", "no reply",
              "joins not counted"], rows, out)
    for r in results:
        print(f"  {r['nodes']} nodes: member's 'peer joined' line {c.fmt(r['member_applied_ms'])} after t0; "
              f"its wg call {c.fmt(r['member_wg_call_ms'])}; the joiner's 'claimed address' line "
              f"{c.fmt(r['claimed_line_after_entry_ms'])} after its entry")
        for b in r["joins_not_counted"]:
            print(f"  not counted: {b}")
    return out


if __name__ == "__main__":
    main()
