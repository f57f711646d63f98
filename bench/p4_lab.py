#!/usr/bin/env python3
"""P4: namespace lab, real agents: a node joins -> every other node has it and pings it.

Method. `ikto_lab.NamespaceLab` (its own state dir and namespace prefix, removed afterwards)
runs --peers real agents over wireguard-go and waits until the mesh converged. Per run a new node
is created (not started); every running member starts `ping -D -i 0.005 -c 1 -w 20 <its address>`
in its own namespace (replies carry epoch timestamps); then the joiner's agent starts. t0 is the
joiner's own log line "claimed address" (its entry is in the bucket when it is logged). Per
member: first echo reply - t0; per join: the slowest member. The joiner then leaves (`ikto leave`)
so every run joins a mesh of the same size.
Floor, same lab: one ping over an established tunnel (RTT), plus a bare KV put -> watch
(0.9 ms: docs/facts.md, "NATS through nats-py").
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c

TARGET = {"p50_ms": 150.0, "p99_ms": 500.0}
PING = ["ping", "-D", "-n", "-i", "0.005", "-c", "1", "-w", "20"]
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def first_reply(out: str) -> float | None:
    for ln in out.splitlines():
        m = _REPLY.match(ln)
        if m:
            return float(m.group(1))
    return None


def claimed_at(log_text: str) -> float:
    """time= of the last "claimed address" line in an agent log (epoch seconds)."""
    from datetime import datetime

    t = None
    for ln in log_text.splitlines():
        if 'msg="claimed address"' in ln:
            t = datetime.strptime(c.parse_logfmt(ln)["time"], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    if t is None:
        raise RuntimeError("joiner never logged 'claimed address'")
    return t


def run_lab(nodes: int, runs: int) -> dict[str, Any]:
    from ikto_lab import NamespaceLab

    state = Path(tempfile.mkdtemp(prefix="ikto-bench-lab-"))
    lab = NamespaceLab(state_dir=state, name=f"ikb{c.os.getpid() % 10000}")
    per_member: list[float] = []
    per_join: list[float] = []
    rtt: list[float] = []
    misses = 0
    try:
        t = time.monotonic()
        lab.up(nodes)
        lab.wait_converged(timeout=120)
        up_s = time.monotonic() - t
        members = lab.members()
        for i in range(runs):
            j = lab.add_node(f"j{i}", start=False)
            addr = lab.config(j)["private_address"]
            running = [m for m in lab.members() if m != j and lab.agent_running(m)]
            pings = {
                m: subprocess.Popen(lab.node_argv(m, [*PING, addr]),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for m in running
            }
            time.sleep(0.2)  # the pings are running
            lab.start_agent(j)
            times = []
            for p in pings.values():
                out, _ = p.communicate(timeout=30)
                r = first_reply(out)
                if r is None:
                    misses += 1
                else:
                    times.append(r)
            t0 = claimed_at(lab.layout.agent_log(j).read_text())
            lat = [(x - t0) * 1000 for x in times]
            per_member += lat
            if lat:
                per_join.append(max(lat))
            # the floor: one ping over the now established tunnel
            cp = lab.exec(running[0], ["ping", "-n", "-c", "3", "-i", "0.05", addr])
            rtt += [float(x) for x in re.findall(r"time=([\d.]+) ms", cp.stdout)]
            lab.leave_node(j)
            time.sleep(0.5)
        # + a KV put -> watch notification (docs/facts.md, "NATS through nats-py")
        floor_ms = c.pct(rtt, 50) + 0.9
        out = {
            "nodes": nodes, "runs": runs, "lab_up_and_converged_s": round(up_s, 1),
            "join_to_ping_ms_slowest_member": c.summary(per_join),
            "join_to_ping_ms_each_member": c.summary(per_member),
            "members_without_reply": misses,
            "floor_ping_rtt_ms": c.summary(rtt), "floor_ms": round(floor_ms, 2),
            "members": len(members),
        }
        p50 = out["join_to_ping_ms_each_member"].get("p50")
        out["ratio_p50"] = round(p50 / floor_ms, 1) if p50 is not None else None
        return out
    finally:
        lab.down()
        import shutil

        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 10, 5)
    a = ap.parse_args(argv)
    c.require_root()
    results = [run_lab(n, a.runs) for n in a.peers]
    rows = [[r["nodes"], c.fmt(r["join_to_ping_ms_each_member"]),
             c.fmt(r["join_to_ping_ms_slowest_member"]),
             f"{r['floor_ms']:.1f} ms", f"{r['ratio_p50']}x", r["members_without_reply"]] for r in results]
    out = {"target": TARGET, "results": results}
    c.report("p4_lab", "P4 lab: a node joins -> every node pings it (target p50 <= 150 ms, p99 <= 500 ms)",
             ["nodes", "per member", "slowest member per join", "floor", "ratio", "no reply"], rows, out)
    return out


if __name__ == "__main__":
    main()
