#!/usr/bin/env python3
"""P7: what operations cost at N peers: one Prometheus scrape, and the whole-mesh view.

Method. A real agent cold-starts with N synthetic peers (as in P2) and settles. Then:

- Scrape: --scrapes sequential `GET /metrics` on the admin socket (a raw HTTP/1.0 request, no
  client library), with per-peer series off (the default) and on (`metrics_per_peer`, agent
  restarted). Per scrape: wall time, body size, series, and the agent's CPU time (utime+stime
  over all the scrapes, divided). While scrapes run back to back, `GET /v1/health` is timed
  beside them: how long a request waits behind a scrape (the event loop's stall). Floor, same
  run: `GET /v1/health` alone, and `wg show <dev> dump` (what collecting per scrape from
  WireGuard, instead of from the agent's own snapshot, would cost).
- Mesh view: --reports presence records with a report each (`alive.<id>`, as agents write
  them) are put in the bucket; `GET /v1/mesh` is timed (--runs times), and one `ikto status
  --mesh` end to end (a new process: Python start-up included). Floor: reading the same records
  with a bare nats-py watch of `alive.*` to its snapshot.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c
from bench.p2_cold import cold_start

TARGET = {"mesh_view_s_at_1000": 1.0}


def http_get(sock: Path, path: str) -> tuple[float, bytes]:
    """(seconds, body) of one GET over the agent's UNIX socket."""
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sock))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: ikto\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    took = time.perf_counter() - t0
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"GET {path}: {head[:200]!r}")
    return took, body


def scrapes(rig: c.Rig, count: int) -> dict[str, Any]:
    sock = rig.agent.socket
    assert rig.agent.proc is not None
    pid = rig.agent.proc.pid
    idle_health = [http_get(sock, "/v1/health")[0] for _ in range(20)]
    beside: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            beside.append(http_get(sock, "/v1/health")[0])
            time.sleep(0.01)

    walls, size, series = [], 0, 0
    cpu0 = c.cpu_seconds(pid)
    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(count):
            took, body = http_get(sock, "/metrics")
            walls.append(took)
            size = len(body)
            series = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
    finally:
        done.set()
        t.join()
    cpu = (c.cpu_seconds(pid) - cpu0) / count  # includes the health probes: an upper bound
    return {
        "wall_ms": c.summary([x * 1000 for x in walls]),
        "agent_cpu_ms_per_scrape": round(cpu * 1000, 1),
        "bytes": size,
        "series": series,
        "health_beside_scrapes_ms": c.summary([x * 1000 for x in beside]),
        "floor_health_idle_ms": c.summary([x * 1000 for x in idle_health]),
    }


def wait_for_series(sock: Path, name: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while name not in http_get(sock, "/metrics")[1]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name.decode()} series after {timeout:g} s")
        time.sleep(0.5)


def wg_dump_floor(dev: str, count: int = 5) -> dict[str, float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        subprocess.run(["wg", "show", dev, "dump"], capture_output=True, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return c.summary(out)


async def put_reports(url: str, peers: list[c.SynthPeer], count: int) -> None:
    """Presence records with a report, as `count` agents keep them (one peer unreachable each
    tenth node, so the view has pairs to name)."""
    import nats

    from ikto.records import Report, presence

    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(c.BUCKET)
    sem = asyncio.Semaphore(256)

    async def one(i: int, p: c.SynthPeer) -> None:
        bad = (f"b{(i + 1) % count}",) if i % 10 == 0 else ()
        value = presence(f"b{i}", Report(count, count, count - len(bad), count - len(bad), bad))
        async with sem:
            await kv.put("alive." + p.key.removeprefix("peers."), value)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(peers[:count])))
    await nc.close()


async def bare_read(url: str) -> float:
    import nats

    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(c.BUCKET)
    t0 = time.perf_counter()
    w = await kv.watch("alive.*")
    n = 0
    async for e in w:
        if e is None:
            break
        n += 1
    took = time.perf_counter() - t0
    await w.stop()
    await nc.close()
    return took


async def one_size(n: int, runs: int, count: int, reports: int) -> dict[str, Any]:
    with c.sandbox("p7") as (ns, workdir, dev):
        async with c.rig_started(ns, workdir, dev) as rig:
            peers = await rig.seed(n)
            out: dict[str, Any] = {"peers": n}
            for per_peer in (False, True):
                rig.agent.config = rig.agent.config.model_copy(update={"metrics_per_peer": per_peer})
                c.write_config(rig.agent.config, rig.agent.config_path)
                assert (await cold_start(rig, n))["wg_peers"] == n
                await asyncio.sleep(3)
                if per_peer:  # the series come from the agent's looks at WireGuard: wait for one
                    await asyncio.to_thread(wait_for_series, rig.agent.socket, b"wireguard_peer_info{", 120)
                out["per_peer" if per_peer else "aggregates"] = await asyncio.to_thread(scrapes, rig, count)
                if per_peer:
                    out["floor_wg_show_dump_ms"] = wg_dump_floor(dev)
                else:  # the mesh view, with the agent in its default setup
                    k = min(reports, n)
                    await put_reports(rig.nats.url, peers, k)
                    sock = rig.agent.socket
                    got = [await asyncio.to_thread(http_get, sock, "/v1/mesh") for _ in range(runs)]
                    views = [took for took, _ in got]
                    body = json.loads(got[-1][1])
                    t0 = time.perf_counter()
                    cli = subprocess.run(
                        [*c.ikto_argv(), "status", "--mesh", "-s", str(rig.agent.socket)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    out["mesh_view"] = {
                        "reports": k,
                        "v1_mesh_ms": c.summary([x * 1000 for x in views]),
                        "cli_status_mesh_s": round(time.perf_counter() - t0, 2),
                        "cli_last_line": cli.stdout.strip().splitlines()[-1] if cli.stdout.strip() else "",
                        "reporting": body["reporting"],
                        "unreachable_pairs": len(body["unreachable_pairs"]),
                        "floor_bare_read_ms": round(await bare_read(rig.nats.url) * 1000, 1),
                    }
                    out["reports_read"] = body["reporting"] >= k  # every report we wrote was shown
                rig.agent.stop()
            return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = c.base_args(__doc__.splitlines()[0], 1000, 5)
    ap.add_argument("--scrapes", type=int, default=20, help="scrapes per setting (default 20)")
    ap.add_argument("--reports", type=int, default=1000, help="reports in the mesh view (default 1000)")
    a = ap.parse_args(argv)
    c.require_root()
    results = [asyncio.run(one_size(n, a.runs, a.scrapes, a.reports)) for n in a.peers]
    rows = []
    for r in results:
        for kind in ("aggregates", "per_peer"):
            s = r[kind]
            rows.append([
                r["peers"], kind, c.fmt(s["wall_ms"]), f"{s['agent_cpu_ms_per_scrape']} ms",
                f"{s['bytes'] / 1024:.0f} KiB", s["series"], c.fmt(s["health_beside_scrapes_ms"]),
                c.fmt(s["floor_health_idle_ms"]), c.fmt(r["floor_wg_show_dump_ms"]),
            ])  # fmt: skip
    out = {"target": TARGET, "results": results}
    c.report("p7_ops", "P7 one scrape of /metrics (floors: /v1/health idle, `wg show dump`)",
             ["peers", "series", "scrape wall", "agent CPU/scrape", "size", "lines", "/v1/health beside",
              "floor /v1/health", "floor wg dump"], rows, out)  # fmt: skip
    mrows = [[r["peers"], r["mesh_view"]["reports"], c.fmt(r["mesh_view"]["v1_mesh_ms"]),
              f"{r['mesh_view']['cli_status_mesh_s']} s", f"{r['mesh_view']['floor_bare_read_ms']} ms",
              r["mesh_view"]["cli_last_line"]] for r in results]  # fmt: skip
    print(f"\nP7 whole-mesh view (target: under {TARGET['mesh_view_s_at_1000']:g} s at 1,000 nodes)")
    head = ["peers", "reports", "GET /v1/mesh", "ikto status --mesh", "floor bare read", "summary"]
    print(c.table(mrows, head))
    return out


if __name__ == "__main__":
    main()
