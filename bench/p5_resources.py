#!/usr/bin/env python3
"""P5: agent memory at N peers and CPU when idle; wireguard-go's own RSS beside it.

Method. A real agent cold-starts with N synthetic peers (as in P2), then nothing changes.
After --settle seconds: VmRSS of the agent and of wireguard-go (/proc/<pid>/status). Then CPU
(utime+stime from /proc/<pid>/stat) over --idle seconds of quiet, as a % of one core; the
agent's periodic full resync (every 60 s +- 20 %) falls inside an idle window of 75 s or more.
Floor: a bare python with nats-py watching the same bucket (RSS), and for wireguard-go the RSS
growth under --syncs repeated no-op `wg syncconf` of the whole mesh (what a resync by syncconf
would cost; the agent itself only syncconfs plans above SYNCCONF_THRESHOLD).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c
from bench.p2_cold import cold_start

TARGET = {"agent_rss_mib": 80.0, "idle_cpu_percent": 1.0}

_BARE_WATCHER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1]); kv = await nc.jetstream().key_value(sys.argv[2])
    w = await kv.watch("peers.*"); vals = {}
    async for e in w:
        if e is None: break
        vals[e.key] = e.value
    print("ready", len(vals), flush=True); await asyncio.sleep(3600)
asyncio.run(main())
"""


def bare_watcher_rss(url: str) -> float:
    argv = [sys.executable, "-c", _BARE_WATCHER, url, c.BUCKET]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(0.5)
        return c.rss_mib(p.pid)
    finally:
        p.kill()
        p.wait()


async def one_size(n: int, runs: int, settle: float, idle: float, syncs: int) -> dict[str, Any]:
    with c.sandbox("p5") as (ns, workdir, dev):
        async with c.rig_started(ns, workdir, dev) as rig:
            await rig.seed(n)
            rss, wgo_rss, cpu, wgo_cpu, calls, applied = [], [], [], [], [], []
            for _ in range(runs):
                applied.append((await cold_start(rig, n))["wg_peers"] == n)
                await asyncio.sleep(settle)
                assert rig.agent.proc is not None
                pid, wpid = rig.agent.proc.pid, c.wg_go_pid(dev)
                rss.append(c.rss_mib(pid))
                if wpid:
                    wgo_rss.append(c.rss_mib(wpid))
                calls0 = (await rig.agent.health())["wg_calls"]
                a0, w0, t0 = c.cpu_seconds(pid), c.cpu_seconds(wpid) if wpid else 0.0, time.monotonic()
                await asyncio.sleep(idle)
                dt = time.monotonic() - t0
                cpu.append(100 * (c.cpu_seconds(pid) - a0) / dt)
                if wpid:
                    wgo_cpu.append(100 * (c.cpu_seconds(wpid) - w0) / dt)
                calls.append((await rig.agent.health())["wg_calls"] - calls0)
                rig.agent.stop()
            # wireguard-go under repeated full no-op syncconf (the interface still holds all n)
            growth = []
            wpid = c.wg_go_pid(dev)
            if wpid and syncs:
                conf = rig.agent.config.wg_config_path.read_text()
                from ikto.render import render_wg  # noqa: F401  (the agent renders the same peers)
                body = "\n".join(ln for ln in conf.splitlines()
                                 if not ln.startswith(("Address", "Table", "MTU")))
                growth.append(c.rss_mib(wpid))
                for _ in range(syncs):
                    c.run(["wg", "syncconf", dev, "/dev/stdin"], body)
                    growth.append(c.rss_mib(wpid))
            bare = bare_watcher_rss(rig.nats.url)
            out = {
                "peers": n, "runs": runs, "settle_s": settle, "idle_s": idle,
                "all_applied": all(applied),  # every cold start put all n peers into WireGuard
                "agent_rss_mib": c.summary(rss),
                "agent_idle_cpu_percent": c.summary(cpu),
                "agent_wg_calls_while_idle": c.summary([float(x) for x in calls]),
                "wireguard_go_rss_mib": c.summary(wgo_rss),
                "wireguard_go_idle_cpu_percent": c.summary(wgo_cpu),
                "wireguard_go_rss_mib_over_noop_syncconfs": [round(x, 1) for x in growth],
                "floor_bare_watcher_rss_mib": round(bare, 1),
            }
            out["ratio_rss"] = round(out["agent_rss_mib"]["p50"] / bare, 2)
            return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 10000, 2)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after cold start before measuring")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    ap.add_argument("--syncs", type=int, default=5, help="no-op full syncconfs for wireguard-go growth")
    a = ap.parse_args(argv)
    c.require_root()
    results = [asyncio.run(one_size(n, a.runs, a.settle, a.idle, a.syncs)) for n in a.peers]
    rows = [[r["peers"], f"{r['agent_rss_mib']['p50']:.1f} MiB", f"{r['floor_bare_watcher_rss_mib']:.1f} MiB",
             f"{r['ratio_rss']}x", f"{r['agent_idle_cpu_percent']['p50']:.2f} %",
             f"{r['wireguard_go_rss_mib'].get('p50', float('nan')):.0f} MiB",
             f"{r['wireguard_go_idle_cpu_percent'].get('p50', float('nan')):.2f} %",
             " -> ".join(f"{x:.0f}" for x in r["wireguard_go_rss_mib_over_noop_syncconfs"])] for r in results]
    out = {"target": TARGET, "results": results}
    c.report("p5_resources", "P5 resources (target agent <= 80 MiB RSS at 10k, idle CPU < 1 %)",
             ["peers", "agent RSS", "bare watcher", "ratio", "agent idle CPU",
                         "wg-go RSS", "wg-go idle CPU", "wg-go RSS over no-op syncconfs (MiB)"], rows, out)
    return out


if __name__ == "__main__":
    main()
