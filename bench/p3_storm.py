#!/usr/bin/env python3
"""P3: storm: N joins spread evenly over 1 s on an N-peer mesh -> all applied; how many `wg` calls.

Method. A real agent holds N synthetic peers. N new entries are put at an even pace over
--window seconds (all puts in flight concurrently, each started at its time). Measured: the time
from the last put's acknowledgement to the arrival of the agent log line that brings the applied
count to N (the agent logs after each `wg` call returns), and the growth of the agent's wg_calls
(admin API /v1/health). `wg show <dev> peers` must then list 2N peers. The joiners are deleted
again between runs. Floor, same run: a bare `wg set` of one peer plus a bare KV put -> watcher
notification (the least any "last put -> applied" can take); also shown: one bare `wg set`
carrying all N new peers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c

TARGET = {"after_last_put_ms": 1500, "wg_calls": 50}


async def storm(rig: c.Rig, joiners: list[c.SynthPeer], window: float) -> float:
    """Put every joiner, evenly over `window` s; the time.time() of the last acknowledgement."""
    loop = asyncio.get_running_loop()
    acks: list[float] = []

    async def put(p: c.SynthPeer) -> None:
        await rig.writer.kv.put(p.key, p.entry())
        acks.append(time.time())

    tasks = []
    t0 = loop.time()
    n = len(joiners)
    i = 0
    while i < n:
        due = t0 + window * i / n
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
            now = loop.time()
        while i < n and t0 + window * i / n <= now:
            tasks.append(asyncio.create_task(put(joiners[i])))
            i += 1
    await asyncio.gather(*tasks)
    return max(acks)


async def wait_peers(rig: c.Rig, want: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (await rig.agent.health())["peers_in_wireguard"] == want:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"agent did not get back to {want} peers")


async def one_size(n: int, joins: int, runs: int, window: float) -> dict[str, Any]:
    with c.sandbox("p3") as (ns, workdir, dev):
        async with c.rig_started(ns, workdir, dev) as rig:
            await rig.seed(n)
            rig.agent.start()
            await asyncio.to_thread(rig.agent.wait_applied, 0, n, 300)
            await asyncio.sleep(2.0)
            fl_wg = c.floor_wg_set(dev, 10)
            fl_kv = await c.floor_kv_notify(rig.nats.url, 20)
            fl_many = c.floor_wg_set_many(dev, joins)
            after, calls, spans, ok = [], [], [], []
            for _ in range(runs):
                joiners = [c.synth_peer(n + i) for i in range(joins)]
                calls0 = (await rig.agent.health())["wg_calls"]
                start = len(rig.agent.lines)
                t_first = time.time()
                t_last = await storm(rig, joiners, window)
                last = await asyncio.to_thread(rig.agent.wait_applied, start, joins, 120)
                after.append((last.arrived - t_last) * 1000)
                spans.append(t_last - t_first)
                await asyncio.sleep(0.3)
                calls.append((await rig.agent.health())["wg_calls"] - calls0)
                ok.append(c.wg_peer_count(dev) == n + joins)
                await rig.writer.delete_many(joiners)
                await wait_peers(rig, n)
                await asyncio.sleep(1.5)  # let the deferred rendered-file write pass
            wgo = c.wg_go_pid(dev)
            floor_s = (c.pct(fl_wg, 50) + c.pct(fl_kv, 50)) / 1000
            out = {
                "peers": n, "joins": joins, "window_s": window, "runs": runs,
                "after_last_put_ms": c.summary(after),
                "wg_calls": c.summary([float(x) for x in calls]),
                "puts_span_s": c.summary(spans),
                "all_applied": all(ok),
                "floor_s": round(floor_s, 4),
                "floor_wg_set_one_ms": c.summary(fl_wg),
                "floor_kv_notify_ms": c.summary(fl_kv),
                "floor_wg_set_all_joins_in_one_call_ms": round(fl_many, 1),
                "wireguard_go_rss_mib_after": round(c.rss_mib(wgo), 1) if wgo else None,
            }
            out["ratio_p50"] = round(out["after_last_put_ms"]["p50"] / 1000 / floor_s, 1)
            return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 1000, 3)
    ap.add_argument("--joins", type=int, help="joins per storm (default: as many as --peers)")
    ap.add_argument("--window", type=float, default=1.0, help="seconds the puts are spread over")
    a = ap.parse_args(argv)
    c.require_root()
    results = [asyncio.run(one_size(n, a.joins or n, a.runs, a.window)) for n in a.peers]
    rows = [[r["peers"], r["joins"], c.fmt(r["after_last_put_ms"]),
             f"p50 {r['wg_calls']['p50']:.0f} (max {r['wg_calls']['max']:.0f})",
             f"{r['floor_s'] * 1000:.1f} ms", f"{r['ratio_p50']}x",
             f"{r['floor_wg_set_all_joins_in_one_call_ms']:.0f} ms",
             "ok" if r["all_applied"] else "NOT ALL"] for r in results]
    out = {"target": TARGET, "results": results}
    title = "P3 storm: N joins within 1 s on an N-peer mesh (target <= 1.5 s after last put, <= 50 wg calls)"
    c.report("p3_storm", title,
             ["peers", "joins", "last put -> all applied", "wg calls", "floor", "ratio",
                         "1 wg set of all", "wg"], rows, out)
    return out


if __name__ == "__main__":
    main()
