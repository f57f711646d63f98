#!/usr/bin/env python3
"""What one shell-out costs, by library and by the size of the calling process.

The floor of P1 is a bare `wg set` through `subprocess`; the agent must go through `sh`.
`sh` forks the Python process, runs Python code in the child before exec and starts four
threads per command; `subprocess` uses vfork and C. This script measures both (and a bare
fork) in this process as started (only `sh` imported, when run alone), after importing what the
agent imports, and after growing its heap to about --grow-mib (the agent at 10k peers is
~80 MiB RSS):

    .venv/bin/python bench/fork_cost.py [--grow-mib 80] [--calls 100]

It runs `true` (no WireGuard, no root needed), so the figures are the shell-out overhead alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sh

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(f: Callable[[], Any], calls: int) -> dict[str, float]:
    xs = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        xs.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)  # spaced, like the agent's calls
    xs.sort()
    return {"n": calls, "p50": round(xs[calls // 2], 3), "p99": round(xs[int(calls * 0.99)], 3)}


def fork_exit() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def measure(calls: int) -> dict[str, Any]:
    true = sh.Command("true")
    env = dict(os.environ)
    return {
        "rss_mib": round(rss_mib(), 1),
        "fork_exit_ms": timed(fork_exit, calls),
        "subprocess_ms": timed(lambda: subprocess.run(["true"], capture_output=True, check=True), calls),
        # the options ikto.wg.sh_runner uses
        "sh_ms": timed(
            lambda: true(_tty_in=False, _tty_out=False, _return_cmd=True, _env=env, _close_fds=False), calls
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grow-mib", type=int, default=80, help="grow the heap to about this RSS (default 80)")
    ap.add_argument("--calls", type=int, default=100, help="calls per figure (default 100)")
    a = ap.parse_args(argv)
    results = {"as started": measure(a.calls)}
    sys.path.insert(0, str(ROOT))
    import ikto.cli  # noqa: F401  (everything the agent imports)
    from bench import common as c

    results["agent imports"] = measure(a.calls)
    ballast: list[dict[str, Any]] = []
    while rss_mib() < a.grow_mib:
        ballast.extend({"k": str(i), "v": [i, i, i]} for i in range(10_000))
    results["agent-sized heap"] = measure(a.calls)
    kinds = ("fork_exit_ms", "subprocess_ms", "sh_ms")
    rows = []
    for name, r in results.items():
        cells = [f"p50 {r[k]['p50']:.1f} / p99 {r[k]['p99']:.1f} ms" for k in kinds]
        rows.append([name, f"{r['rss_mib']:.0f} MiB", *cells])
    head = ["caller", "RSS", "fork + _exit", "subprocess.run", "sh (ikto's options)"]
    title = "One shell-out (`true`) by library and caller size"
    c.report("fork_cost", title, head, rows, {"results": results}, keepalive=False)
    return results


if __name__ == "__main__":
    main()
