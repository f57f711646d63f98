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

# name -> (arguments, the keys its result must report as true: every mesh peer reached WireGuard;
# for P6, every watch was accepted, every join reached every watcher, and the server's /connz
# showed each real agent's connection under its name)
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "p1_change": (["--peers", "20", "--runs", "1", "--samples", "4"], ("validated_in_dump",)),
    "p2_cold": (["--peers", "20", "--runs", "1"], ("all_applied",)),
    "p3_storm": (["--peers", "20", "--runs", "1", "--window", "0.2"], ("all_applied",)),
    "p5_resources": (
        ["--peers", "20", "--runs", "1", "--settle", "0.2", "--idle", "0.5", "--syncs", "1"],
        ("all_applied",),
    ),
    "p6_fleet": (
        ["--levels", "12", "--window", "3", "--settle", "1", "--joins", "2", "--no-breakdown"],
        ("all_watchers_accepted", "every_join_reached_all", "agents_measured"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_runs_and_writes_json(name: str, tmp_path: Path) -> None:
    args, keys = CASES[name]
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path)}
    cp = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    data = json.loads((tmp_path / f"{name}-latest.json").read_text())
    assert data["results"] and data["results"][0]
    r = data["results"][0]
    for key in keys:
        assert key in r, f"{name} no longer reports {key!r}: {sorted(r)}"
        assert r[key] is True, f"{name}: {key} is {r[key]!r}"
