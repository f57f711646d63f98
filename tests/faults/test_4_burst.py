"""Many writes at once: a burst of 5,000 updates, and a watch started in the middle of
writes. Scenarios 12 and 13: the agent applies them in few `wg` calls, and its WireGuard
ends equal to the bucket."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest
from faultlab import CONVERGE, FAST, FaultLab, check_peers, identities

pytestmark = pytest.mark.timeout(240)

KEYS, ROUNDS = 100, 50  # 5,000 writes


def differences(lab: FaultLab, node: str, dump: dict[str, Any]) -> list[str]:
    """Where node's WireGuard differs from the bucket (entries near remove_after are ignored)."""
    assert dump, "the bucket dump came back empty (the lab nodes' own entries are missing)"
    me = lab.wg_device(node)
    stamps = {k: datetime.fromisoformat(e["created"]) for k, e in dump.items()}
    newest = max(stamps.values())
    want, either = {}, set()
    for k, e in dump.items():
        v = e["value"]
        if v["public_key"] == me.public_key:
            continue
        age = (newest - stamps[k]).total_seconds()
        if age > FAST["remove_after"] - 2:  # silent: maybe out of WireGuard by now
            either.add(v["public_key"])
            continue
        want[v["public_key"]] = (v["allowed_ip"], f"{v['advertise_address']}:{v['wg_port']}")
    out = []
    for pk, (net, ep) in want.items():
        p = me.peers.get(pk)
        if p is None:
            out.append(f"{node}: missing {pk[:8]}… {net}")
        elif [str(x) for x in p.allowed_ips] != [net] or p.endpoint != ep:
            out.append(f"{node}: {pk[:8]}… is {p.allowed_ips} {p.endpoint}, bucket says {net} {ep}")
    out += [f"{node}: extra peer {pk[:8]}…" for pk in me.peers.keys() - want.keys() - either]
    return out


def wg_calls(lab: FaultLab, node: str) -> int:
    return int(lab.agent_status(node)["health"]["wg_calls"])


def test_burst_of_5000_updates(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    calls = {n: wg_calls(lab, n) for n in ids}
    try:
        res = lab.admin("burst", "--keys", str(KEYS), "--rounds", str(ROUNDS))
        print(f"{res['writes']} writes in {res['seconds']} s")
        t0 = time.monotonic()
        deadline = t0 + 20
        while True:
            dump = lab.admin("dump")
            diffs = [d for n in list(ids)[:3] for d in differences(lab, n, dump)]
            if not diffs:
                break
            assert time.monotonic() < deadline, f"not applied after 20 s: {diffs[:5]} ({len(diffs)})"
            time.sleep(0.5)
        print(f"applied everywhere {time.monotonic() - t0:.1f} s after the burst")
        ports = {p.endpoint.rsplit(":", 1)[1] for p in lab.wg_device(next(iter(ids))).peers.values()}
        assert str(1000 + ROUNDS - 1) in ports
        used = {n: wg_calls(lab, n) - calls[n] for n in ids}
        print(f"wg calls per node for {KEYS * ROUNDS} updates: {used}")
        assert max(used.values()) <= 150, f"too many wg calls: {used}"
        for n in ids:
            assert lab.agent_status(n)["health"]["ok"], f"{n} unhealthy after the burst"
        assert check_peers(lab, ids) == []
    finally:
        lab.admin("delete-fakes")
    lab.wait_converged(CONVERGE)


def test_watch_started_under_concurrent_writes(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    node = next(iter(ids))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            lab.admin("burst", "--keys", "60", "--rounds", "60")
        except BaseException as e:
            errors.append(e)

    try:
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.5)
        lab.stop_agent(node)
        lab.start_agent(node)  # its snapshot and watch start while the writes pour in
        t.join(120)
        assert not errors, errors
        deadline = time.monotonic() + 20
        while diffs := differences(lab, node, lab.admin("dump")):
            assert time.monotonic() < deadline, f"{node} differs from the bucket: {diffs[:5]} ({len(diffs)})"
            time.sleep(0.5)
        assert check_peers(lab, ids) == []
    finally:
        lab.admin("delete-fakes")
    lab.wait_converged(CONVERGE)
