"""The benchmarks still run: each bench/ script at ~20 peers, one run. Nothing about time is asserted.

Each runs as its own process: the benchmarks move their main thread into a network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# name -> (arguments, the key its result must report as true: every mesh peer reached WireGuard)
CASES = {
    "p1_change": (["--peers", "20", "--runs", "1", "--samples", "4"], "validated_in_dump"),
    "p2_cold": (["--peers", "20", "--runs", "1"], "all_applied"),
    "p3_storm": (["--peers", "20", "--runs", "1", "--window", "0.2"], "all_applied"),
    "p5_resources": (
        ["--peers", "20", "--runs", "1", "--settle", "0.2", "--idle", "0.5", "--syncs", "1"],
        "all_applied",
    ),
    "p7_ops": (["--peers", "20", "--runs", "1", "--scrapes", "2", "--reports", "20"], "reports_read"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_runs_and_writes_json(name: str, tmp_path: Path) -> None:
    args, key = CASES[name]
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path)}
    cp = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    data = json.loads((tmp_path / f"{name}-latest.json").read_text())
    assert data["results"] and data["results"][0]
    r = data["results"][0]
    assert key in r, f"{name} no longer reports {key!r}: {sorted(r)}"
    assert r[key] is True, f"{name}: {key} is {r[key]!r}"
