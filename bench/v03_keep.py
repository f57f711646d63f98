#!/usr/bin/env python3
"""A mixed mesh at the default timers: is an ikto v0.3 node kept for hours while it is reachable?

Method. `ikto_lab.NamespaceLab` (its own state dir and namespaces, removed afterwards): three
real agents at their default settings (remove_after 10 min, reclaim_after 1 h) and one node set
up as ikto v0.3 sets itself up (`ikto_lab.legacy`: its entry written once in v0.3's format,
never rewritten; WireGuard with no keepalive; no presence record). Every --every seconds, for
--minutes: is old1 in every agent's WireGuard, what state and evidence does each agent show for
it, and does one ping from each agent reach it. At the end (past reclaim_after when --minutes
is above 60), a new node is told to claim old1's address: old1's entry must keep its key, the
newcomer must take another address, and old1 must still answer.

The tests shrink the timers (tests/e2e/test_nat.py: remove_after 20 s, reclaim_after 40 s);
this runs them at their real length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common as c


def progress(msg: str) -> None:
    print(f"[v03 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def view(lab: Any, node: str, peer: str) -> dict[str, Any]:
    out = lab.exec(node, ["ikto", "status", "--json"], timeout=30)
    if out.returncode != 0:
        return {"error": out.stderr.strip()}
    peers = json.loads(out.stdout).get("peers", [])
    return next((p for p in peers if p.get("name") == peer), {"error": "not listed"})


def kept(x: dict[str, Any]) -> bool:
    return bool(x["in_wireguard"] and x["ping"] and x["state"] == "ok")


def run(minutes: float, every: float) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    with c.throwaway_lab("v03") as lab:
        lab.up(3)
        lab.wait_converged(timeout=120)
        agents = lab.members()[:3]
        lab.add_v03_node("old1")
        old_key = lab.wg_device("old1").public_key
        old_ip = lab.config("old1")["private_address"]
        t0 = time.monotonic()
        progress(f"v0.3 node old1 ({old_ip}) beside {agents}; watching {minutes:.0f} min")
        while (t := time.monotonic() - t0) < minutes * 60:
            s: dict[str, Any] = {"t": round(t)}
            for a in agents:
                v = view(lab, a, "old1")
                s[a] = {
                    "in_wireguard": old_key in lab.wg_device(a).peers,
                    "state": v.get("state"),
                    "evidence": v.get("evidence"),
                    "ping": lab.ping(a, "old1", 5),
                }
            samples.append(s)
            bad = {a: x for a, x in s.items() if a != "t" and not kept(x)}
            if bad or len(samples) % 20 == 1:
                progress(f"{t / 60:.1f} min: {'NOT KEPT ' + str(bad) if bad else 'kept by all, ok'}")
            time.sleep(every)
        kept_min = (time.monotonic() - t0) / 60
        lab.add_node("claimant", private_address=old_ip)
        lab.wait_converged(timeout=120)
        claimant_ip = lab.config("claimant")["private_address"]  # the agent writes a move back
        entry_key = view(lab, agents[0], "old1").get("public_key")
        still = all(lab.ping(a, "old1", 10) for a in agents)
    bad = [s for s in samples if any(a != "t" and not kept(x) for a, x in s.items())]
    evidence = sorted({x["evidence"] for s in samples for a, x in s.items() if a != "t" and x["evidence"]})
    return {
        "watched_min": round(kept_min, 1),
        "samples": len(samples),
        "samples_not_kept": bad,
        "evidence_seen": evidence,
        "claimant_asked_for": old_ip,
        "claimant_got": claimant_ip,
        "old1_entry_key_unchanged": entry_key == old_key,
        "old1_answers_after_claim": still,
        "met": not bad and claimant_ip != old_ip and still and entry_key == old_key,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--minutes", type=float, default=70.0, help="minutes to watch (default 70: past reclaim_after)"
    )
    ap.add_argument("--every", type=float, default=30.0, help="seconds between two samples (default 30)")
    a = ap.parse_args(argv)
    c.require_root()
    out = run(a.minutes, a.every)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
