"""`make demo`: a three-node mesh in namespaces, shown working, left up to explore."""

from __future__ import annotations

import logging
import os
import sys
import time
from itertools import permutations
from pathlib import Path

from ikto.errors import IktoError
from ikto_lab.lab import NamespaceLab
from ikto_lab.state import DEFAULT_STATE_DIR

NODES = 3


def _lab_command() -> str:
    """How to call the lab CLI: the `ikto-lab` beside this Python (the venv's), else from PATH."""
    script = Path(sys.executable).parent / "ikto-lab"
    return _short(str(script)) if script.exists() else "ikto-lab"


def _short(path: str) -> str:
    """path relative to the working directory when it is below it (`.venv/bin/ikto`)."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _show(lab: NamespaceLab, node: str, argv: list[str]) -> None:
    print(f"\n$ ikto-lab exec {node} -- {' '.join(argv)}", flush=True)
    cp = lab.exec(node, argv)
    sys.stdout.write(cp.stdout + cp.stderr)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="==> %(message)s", stream=sys.stdout)
    say = logging.getLogger("ikto_lab").info
    lab = NamespaceLab(DEFAULT_STATE_DIR)
    try:
        if lab.is_up():
            say("removing the lab left in %s", DEFAULT_STATE_DIR)
        lab.down()
        lab = NamespaceLab(DEFAULT_STATE_DIR)
        t0 = time.monotonic()
        lab.up(NODES)
        say("lab up in %.1f s; waiting for the mesh to converge", time.monotonic() - t0)
        took = lab.wait_converged(60)
        say("every node has every other as a peer (%.1f s)", took)
        _show(lab, "node1", ["wg", "show", "wg-ikto"])
        _show(lab, "node1", ["ikto", "status"])
        print(flush=True)
        say("pinging every pair over the mesh")
        failed = 0
        for a, b in permutations(lab.nodes(), 2):
            ok = lab.ping(a, b, timeout=10)
            failed += not ok
            print(f"    {a} -> {b} ({lab.mesh_address(b)}): {'ok' if ok else 'FAILED'}", flush=True)
    except IktoError as e:
        print(f"ikto-lab: {e}", file=sys.stderr)
        return e.exit_code
    lab_cmd = _lab_command()
    print(
        f"""
The lab is up ({lab.layout.root}). Explore it:
    {lab_cmd} status
    {lab_cmd} exec node1 -- wg show
    {lab_cmd} exec node1 -- ikto status
    {lab_cmd} logs node2
    {lab_cmd} add node4
Tear it down with: make lab-down"""
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
