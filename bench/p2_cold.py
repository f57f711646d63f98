#!/usr/bin/env python3
"""P2: cold start: N peers in the bucket, no interface, no rendered file -> all N in WireGuard.

Method. Per run: the interface and the agent's rendered config are removed, then a real
`ikto agent` subprocess starts (t0 = just before exec). Done = the arrival of the log line(s)
that account for N applied peers (the agent logs after `wg` returned); a `wg show <dev> peers`
must then list N peers. The agent's own log timestamps give the breakdown: python start,
interface up, NATS connected, address claimed, snapshot loaded, peers applied.
Floor, same run: a bare `wireguard-go <dev2>` + `wg syncconf` of the same N peers via
subprocess on a second fresh interface, plus a bare nats-py watcher's snapshot of the bucket.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c

TARGET = {"cold_start_s": 4.0}
STEPS = ("starting", "interface up", "connected to NATS", "claimed address", "bucket snapshot loaded")


def wg_conf(peers: list[c.SynthPeer]) -> str:
    lines = ["[Interface]", "ListenPort = 51999", f"PrivateKey = {c.keys.generate_private_key()}"]
    for p in peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}", f"AllowedIPs = {p.allowed_ip}",
                  f"Endpoint = {p.advertise}:51820", f"PersistentKeepalive = {c.KEEPALIVE}"]
    return "\n".join(lines) + "\n"


def floor_wg_cold(dev: str, peers: list[c.SynthPeer]) -> tuple[float, float]:
    """(s to start wireguard-go, s for `wg syncconf` of all peers) on a fresh interface."""
    conf = wg_conf(peers)
    t = time.perf_counter()
    c.run(["wireguard-go", dev])
    started = time.perf_counter() - t
    t = time.perf_counter()
    c.run(["wg", "syncconf", dev, "/dev/stdin"], conf)
    sync = time.perf_counter() - t
    c.run(["ip", "link", "del", "dev", dev], check=False)
    return started, sync


async def cold_start(rig: c.Rig, n: int) -> dict[str, Any]:
    """Start the agent with no interface and no rendered file; time until n peers applied."""
    c.run(["ip", "link", "del", "dev", rig.dev], check=False)
    for _ in range(100):  # wireguard-go exits when its interface goes
        if c.wg_go_pid(rig.dev) is None:
            break
        time.sleep(0.02)
    rig.agent.config.wg_config_path.unlink(missing_ok=True)
    rig.agent.start()
    t0 = rig.agent.started_at
    last = await asyncio.to_thread(rig.agent.wait_applied, 0, n, 300)
    total = last.arrived - t0
    steps: dict[str, float] = {}
    for ln in rig.agent.lines:
        m = ln.fields.get("msg")
        if m in STEPS and m not in steps:
            steps[m] = round(ln.logged - t0, 3)
    steps["applied"] = round(last.logged - t0, 3)
    applied_line = next((ln for ln in rig.agent.lines if ln.fields.get("msg") == "applied peers"), None)
    wg_ms = float(applied_line.fields.get("ms", "nan")) if applied_line else float("nan")
    return {"total_s": total, "steps_s": steps, "apply_call_ms": wg_ms, "wg_peers": c.wg_peer_count(rig.dev)}


async def one_size(n: int, runs: int) -> dict[str, Any]:
    with c.sandbox("p2") as (ns, workdir, dev):
        async with c.rig_started(ns, workdir, dev) as rig:
            peers = await rig.seed(n)
            totals, fl_start, fl_sync, fl_snap, detail = [], [], [], [], []
            for _ in range(runs):
                s, y = floor_wg_cold(dev + "f", peers)
                fl_start.append(s)
                fl_sync.append(y)
                fl_snap.append(await c.floor_snapshot(rig.nats.url) / 1000)
                r = await cold_start(rig, n)
                rig.agent.stop()
                totals.append(r["total_s"])
                detail.append(r)
            floor = [a + b + d for a, b, d in zip(fl_start, fl_sync, fl_snap, strict=True)]
            out = {
                "peers": n, "runs": runs,
                "cold_start_s": c.summary(totals),
                "floor_s": c.summary(floor),
                "floor_wireguard_go_start_s": c.summary(fl_start),
                "floor_wg_syncconf_s": c.summary(fl_sync),
                "floor_kv_snapshot_s": c.summary(fl_snap),
                "runs_detail": detail,
                "all_applied": all(d["wg_peers"] == n for d in detail),
            }
            out["ratio_p50"] = round(out["cold_start_s"]["p50"] / out["floor_s"]["p50"], 2)
            return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 10000, 3)
    a = ap.parse_args(argv)
    c.require_root()
    results = [asyncio.run(one_size(n, a.runs)) for n in a.peers]
    rows = []
    for r in results:
        st = r["runs_detail"][len(r["runs_detail"]) // 2]["steps_s"]
        rows.append([r["peers"], c.fmt(r["cold_start_s"], "s"), f"{r['floor_s']['p50']:.2f} s",
                     f"{r['ratio_p50']}x", "ok" if r["all_applied"] else "NOT ALL",
                     " ".join(f"{k.split()[0]}={v:.2f}" for k, v in st.items())])
    out = {"target": TARGET, "results": results}
    c.report("p2_cold", "P2 cold start: N peers in the bucket -> all applied (target <= 4 s at 10k)",
             ["peers", "cold start", "floor", "ratio", "wg", "breakdown (s since exec)"], rows, out)
    return out


if __name__ == "__main__":
    main()
