"""`ikto agent` as a process: a stop never hangs, whatever is left running inside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ikto import keys

# An agent whose run() ends but leaves a worker thread that never returns (as a `wg` call stuck
# on a dead UAPI socket would): without the watchdog the interpreter waits for it forever.
SCRIPT = """
import asyncio, sys, threading
import ikto.agent, ikto.cli

class Hangs:
    restart = False
    def __init__(self, cfg, path): pass
    async def run(self, serve_api=None):
        asyncio.get_running_loop().run_in_executor(None, threading.Event().wait)
        print("stopped", flush=True)
        return 0

ikto.agent.Agent = Hangs
ikto.cli.STOP_WITHIN = 1.0
ikto.cli.main(["agent", "-c", sys.argv[1]])
"""


def test_a_process_that_outlives_its_stop_dumps_its_threads_and_exits(tmp_path: Path) -> None:
    cfg = tmp_path / "ikto.json"
    (tmp_path / "key").write_text(keys.generate_private_key() + "\n")
    (tmp_path / "key").chmod(0o600)
    cfg.write_text(json.dumps({
        "advertise_address": "198.18.0.9", "private_address": "fd10:1::", "name": "n1",
        "private_key_path": str(tmp_path / "key"), "admin_socket": str(tmp_path / "s.sock"),
    }))  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg)], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    assert "stopped" in p.stdout, p.stderr
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "most recent call first" in p.stderr and "threading.py" in p.stderr, p.stderr
    assert took < 20, took  # not forever (a generous bound: this is not a timing test)
