#!/usr/bin/env python3
"""P1: one peer change at N peers: KV put -> the peer as `wg show` reports it.

Method. A real `ikto agent` subprocess with a real wireguard-go interface (own netns) holds N
synthetic peers. Each sample is one put (alternately a new peer joining and an existing peer
changing its endpoint), spaced 100 ms apart so no sample is coalesced with another. The time
the change becomes visible is taken from outside the agent in two ways:
  * log: the arrival, on the agent's stderr pipe, of its "peer joined"/"peer changed" line for
    that key; the agent logs it right after `wg set` returned, so the peer is in WireGuard by
    then (an upper bound of "visible": it adds the logging and the pipe);
  * uapi (N <= --poll-max): a tight poll of wireguard-go's own UAPI socket (`get=1`, what `wg show`
    reads) until the peer is there with its new endpoint. Polling is O(N) per look and steals
    CPU from the agent, so it is only used at small N, to check the log method.
At the end a full `wg show <dev> dump` must hold every peer with its last endpoint, and the
agent's wg_calls (admin API /v1/health) must have grown by exactly one per sample.
Floor, same run, same interface: a bare `wg set` of one peer via subprocess, plus a bare KV
put -> watcher notification. ratio = our p50 / (floor wg p50 + floor kv p50).
"""

from __future__ import annotations

import asyncio
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c

TARGET = {"p50_ms": 15.0, "p99_ms": 40.0}


async def one_size(n: int, runs: int, samples: int, poll_max: int) -> dict[str, Any]:
    with c.sandbox("p1") as (ns, workdir, dev):
        async with c.rig_started(ns, workdir, dev) as rig:
            peers = await rig.seed(n)
            rig.agent.start()
            rig.agent.wait_applied(0, n, timeout=120)
            await asyncio.sleep(2.0)  # let the deferred config write and logs settle
            floor_wg = c.floor_wg_set(dev)
            floor_kv = await c.floor_kv_notify(rig.nats.url)
            calls0 = (await rig.agent.health())["wg_calls"]
            expected: dict[str, str] = {}
            lat_log: list[float] = []
            lat_logged: list[float] = []
            lat_poll: list[float] = []
            run_p50: list[float] = []
            next_new = n
            poll = n <= poll_max
            for r in range(runs):
                this_run: list[float] = []
                for s in range(samples):
                    if s % 2 == 0:
                        p = c.synth_peer(next_new)
                        next_new += 1
                        value, endpoint, what = p.entry(), f"{p.advertise}:51820", "peer joined"
                    else:
                        p = peers[(r * samples + s) % n]
                        adv = str(IPv4Address(int(IPv4Address("198.19.0.1")) + r * samples + s))
                        value, endpoint, what = p.entry(adv), f"{adv}:51820", "peer changed"
                    expected[p.public_key] = endpoint
                    start = len(rig.agent.lines)
                    t0 = time.time()
                    await rig.writer.kv.put(p.key, value)
                    if poll:
                        while not c.uapi_has(c.uapi_get(dev), p.public_key, endpoint):
                            pass
                        lat_poll.append((time.time() - t0) * 1000)
                    _, line = rig.agent.wait_line(
                        lambda f, pk=p.public_key, w=what: f.get("public_key") == pk and f.get("msg") == w,
                        start, timeout=30,
                    )
                    ms = (line.arrived - t0) * 1000
                    lat_log.append(ms)
                    this_run.append(ms)
                    lat_logged.append((line.logged - t0) * 1000)
                    await asyncio.sleep(0.1)
                run_p50.append(c.pct(this_run, 50))
            await asyncio.sleep(0.2)
            calls = (await rig.agent.health())["wg_calls"] - calls0
            dump = c.wg_dump_peers(dev)
            missing = [pk for pk, ep in expected.items() if dump.get(pk, ("",))[0] != ep]
            wgo = c.wg_go_pid(dev)
            result = {
                "peers": n, "runs": runs, "samples_per_run": samples,
                "latency_ms_log": c.summary(lat_log),
                "latency_ms_logged_time": c.summary(lat_logged),
                "latency_ms_uapi_poll": c.summary(lat_poll),
                "run_p50_ms": c.summary(run_p50),
                "floor_wg_set_ms": c.summary(floor_wg),
                "floor_kv_notify_ms": c.summary(floor_kv),
                "wg_calls": calls, "changes": len(lat_log),
                "validated_in_dump": not missing, "missing": len(missing),
                "wg_peers": len(dump),
                "wireguard_go_rss_mib": round(c.rss_mib(wgo), 1) if wgo else None,
                "agent_rss_mib": round(c.rss_mib(rig.agent.proc.pid), 1) if rig.agent.proc else None,
            }
            floor = result["floor_wg_set_ms"]["p50"] + result["floor_kv_notify_ms"]["p50"]
            result["floor_ms"] = round(floor, 2)
            result["ratio_p50"] = round(result["latency_ms_log"]["p50"] / floor, 2)
            return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 10000, 3)
    ap.add_argument("--samples", type=int, default=40, help="changes per run (default 40)")
    ap.add_argument("--poll-max", type=int, default=1000, help="also poll UAPI up to this many peers")
    a = ap.parse_args(argv)
    c.require_root()
    results = [asyncio.run(one_size(n, a.runs, a.samples, a.poll_max)) for n in a.peers]
    rows = [[r["peers"], c.fmt(r["latency_ms_log"]), c.fmt(r["latency_ms_uapi_poll"]),
             f"{r['floor_ms']:.1f} ms", f"{r['ratio_p50']}x", f"{r['wg_calls']}/{r['changes']}",
             "ok" if r["validated_in_dump"] else f"MISSING {r['missing']}"] for r in results]
    out = {"target": TARGET, "results": results}
    c.report("p1_change", "P1 one change: KV put -> visible in WireGuard (target p50 <= 15 ms, p99 <= 40 ms)",
             ["peers", "put->applied (log)", "put->visible (uapi poll)", "floor",
                         "ratio", "wg calls", "dump"], rows, out)
    return out


if __name__ == "__main__":
    main()
