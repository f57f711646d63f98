#!/usr/bin/env python3
"""`make bench`: P1-P6 at their target sizes, then one summary table against the targets.

Each benchmark also runs alone (bench/p1_change.py ... --peers 100 1000 10000 --runs 3);
results go to bench/results/<name>-<time>.json and <name>-latest.json. On a shared machine run
it under the lab lock, as every lab user does: `flock /tmp/ikto-lab.lock make bench`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c
from bench import fork_cost, p1_change, p2_cold, p3_storm, p4_lab, p5_resources, p6_fleet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", action="store_true",
                    help="also run P1-P3 and P5 at 100 and 1,000 peers, and P6 on nats-server 2.9 too")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="any of p1 p2 p3 p4 p5 p6 fork; e.g. --skip p4")
    a = ap.parse_args()
    big = ["100", "1000", "10000"] if a.scale else ["10000"]
    runs = ["--runs", str(a.runs)]
    rows: list[list[Any]] = []
    if "p1" not in a.skip:
        r = p1_change.main(["--peers", *big, *runs])["results"][-1]
        rows.append(["P1 one change @10k", "p50<=15 ms, p99<=40 ms",
                     f"p50 {r['latency_ms_log']['p50']:.1f}, p99 {r['latency_ms_log']['p99']:.1f} ms",
                     f"{r['floor_ms']:.1f} ms", f"{r['ratio_p50']}x"])
    if "p2" not in a.skip:
        r = p2_cold.main(["--peers", *big, *runs])["results"][-1]
        rows.append([f"P2 cold start @10k, keepalive {c.KEEPALIVE or 'off'}", "<=4 s",
                     c.fmt(r["cold_start_s"], "s"), f"{r['floor_s']['p50']:.2f} s", f"{r['ratio_p50']}x"])
        if c.KEEPALIVE:
            # Synthetic endpoints never answer: with keepalives wireguard-go spends the cold
            # start handshaking with 10k dead peers. Also measure it as a silent mesh would be.
            saved, c.KEEPALIVE = c.KEEPALIVE, 0
            try:
                r = p2_cold.main(["--peers", big[-1], *runs])["results"][-1]
            finally:
                c.KEEPALIVE = saved
            rows.append(["P2 cold start @10k, keepalive off", "<=4 s", c.fmt(r["cold_start_s"], "s"),
                         f"{r['floor_s']['p50']:.2f} s", f"{r['ratio_p50']}x"])
    if "p3" not in a.skip:
        small = ["100", "1000"] if a.scale else ["1000"]
        r = p3_storm.main(["--peers", *small, *runs])["results"][-1]
        rows.append(["P3 storm 1k+1k", "<=1500 ms, <=50 calls",
                     f"{r['after_last_put_ms']['p50']:.0f} ms "
                     f"(max {r['after_last_put_ms']['max']:.0f}), "
                     f"{r['wg_calls']['p50']:.0f} calls", f"{r['floor_s'] * 1000:.1f} ms",
                     f"{r['ratio_p50']}x"])
    if "p4" not in a.skip:
        for r in p4_lab.main(["--peers", "10", "50", "--runs", str(max(a.runs, 5))])["results"]:
            s = r["join_to_ping_ms_each_member"]
            k = 1 if r["nodes"] <= 10 else 2
            rows.append([f"P4 lab join->ping ({r['nodes']})", f"p50<={40 * k}, p99<={150 * k} ms",
                         f"p50 {s['p50']:.0f}, p99 {s['p99']:.0f} ms",
                         f"{r['floor_ms']:.1f} ms (lab {r['lab_floor_ms']['p50']:.0f} ms)",
                         f"{r['ratio_p50']}x ({r['ratio_p50_lab_floor']}x)"])
    if "p5" not in a.skip:
        r = p5_resources.main(["--peers", *big, "--runs", "1"])["results"][-1]
        rows.append(["P5 RSS / idle CPU @10k", "<=80 MiB, <1 %",
                     f"{r['agent_rss_mib']['p50']:.0f} MiB, {r['agent_idle_cpu_percent']['p50']:.2f} %",
                     f"{r['floor_bare_watcher_rss_mib']:.0f} MiB", f"{r['ratio_rss']}x"])
    if "p6" not in a.skip:
        for server in ("2.15", "2.9") if a.scale else ("2.15",):
            res = p6_fleet.main(["--server", server])
            top = res["results"][-1]
            n = top["nodes"]
            agent = max(r_ for lv in res["results"] for r_ in lv["agent_msgs_per_s"].values())
            rows.append([f"P6 fleet, {res['server']}: agent msg/s at any N", "<=1",
                         f"max {agent:.2f}", "-", "-"])
            j = top.get("join_all_reached_ms", {})
            rows.append([f"P6 one join reaches all {n}", "p99<=1000 ms",
                         f"p50 {j.get('p50', float('nan')):.0f}, p99 {j.get('p99', float('nan')):.0f} ms",
                         "-", "-"])
            rows.append([f"P6 server CPU / RSS at {n}", "<=10 %", f"{top['server_cpu_pct']:.1f} %, "
                         f"{top['server_rss_mib']:.0f} MiB", "-", "-"])
            rows.append([f"P6 watches accepted at {n}", f"{n}", f"{top['watchers_started']}", "-", "-"])
    if "fork" not in a.skip:
        r = fork_cost.main([])["agent-sized heap"]
        rows.append(["one shell-out at agent size (P1's gap)", "-", f"sh p50 {r['sh_ms']['p50']:.1f} ms",
                     f"subprocess {r['subprocess_ms']['p50']:.1f} ms",
                     f"{r['sh_ms']['p50'] / r['subprocess_ms']['p50']:.1f}x"])
    print()
    print(c.table(rows, ["benchmark", "target", "measured", "floor", "ratio"]))


if __name__ == "__main__":
    main()
