"""Routed networks and key rotation on a running mesh, end to end (issue 13), on either lab.

A LAN behind a node is a host in a network namespace inside that node (LabDriver.add_lan), on
a network of the mesh's family outside it (both labs' mesh is 198.19.0.0/16): the other nodes
reach it from their mesh addresses, and the host's answers come back through the mesh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ikto_lab import LabDriver
from ikto_lab.driver import CONFIG_PATH, DEV
from ikto_lab.pinger import parse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

LAN = "198.18.250.0/24"  # no lab uses it; the mesh is 198.19.0.0/16
FORWARDING = "net.ipv4.ip_forward"
PING_INTERVAL = 0.01  # seconds: the "every 10 ms"
PINGS = 800  # 8 s of pings, the rotation in the middle


def restart(lab: LabDriver, node: str, **config: object) -> None:
    """Change node's config and restart its agent (routes are read at start)."""
    lab.stop_agent(node)
    lab.set_config(node, **config)
    lab.start_agent(node)


def allowed_ips(lab: LabDriver, node: str, peer: str) -> list[str]:
    """The AllowedIPs node's WireGuard holds for peer."""
    key = lab.wg_device(peer).public_key
    held = lab.wg_device(node).peers.get(key)
    return list(held.allowed_ips) if held else []


def routes_via_mesh(lab: LabDriver, node: str) -> str:
    return lab.exec(node, ["ip", "route", "show", "dev", DEV], check=True).stdout


def wait_for(what: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(0.5)


@pytest.fixture
def lan_behind_first(lab: LabDriver) -> Iterator[str]:
    """A LAN behind the first node, forwarding on; removed, and routes withdrawn, afterwards."""
    first = lab.members()[0]
    host = lab.add_lan(first, LAN)
    try:
        yield host
    finally:
        lab.remove_lan(first)
        for n in lab.members():
            if lab.config(n).get("routes"):
                restart(lab, n, routes=[])


def test_a_routed_lan_is_reached_refused_to_a_second_node_and_withdrawn(
    lab: LabDriver, lan_behind_first: str
) -> None:
    a, b, c = lab.members()[:3]
    host = lan_behind_first

    # Announced without forwarding: `ikto check` says what is missing.
    lab.exec(a, ["sysctl", "-qw", f"{FORWARDING}=0"], check=True)
    lab.set_config(a, routes=[LAN])
    checked = lab.exec(a, ["ikto", "check", "-c", CONFIG_PATH])
    assert checked.returncode == 0, checked.stderr
    assert "IPv4 forwarding is off" in checked.stderr
    lab.exec(a, ["sysctl", "-qw", f"{FORWARDING}=1"], check=True)
    restart(lab, a, routes=[LAN])

    # Every other node routes it through the mesh to a, and reaches the host behind a.
    for n in (b, c):
        assert lab.reach(n, host, 30), f"{n} cannot reach {host} behind {a}:\n{lab.log_tail(a)}"
        assert LAN in allowed_ips(lab, n, a)
        assert LAN in routes_via_mesh(lab, n)

    # A second node announcing it is refused (it says so) and changes nothing elsewhere.
    restart(lab, b, routes=[LAN])
    status = lab.agent_status(b)
    assert any(f"our routed network {LAN}" in r["reason"] for r in status["rejected"]), status["rejected"]
    assert LAN not in allowed_ips(lab, c, b) and LAN in allowed_ips(lab, c, a)
    assert lab.reach(c, host, 10), f"{c} lost {host} when {b} announced it too"

    # Withdrawn (both nodes): gone from AllowedIPs and routes everywhere.
    restart(lab, b, routes=[])
    restart(lab, a, routes=[])

    def gone() -> bool:
        return all(
            LAN not in allowed_ips(lab, n, p) and LAN not in routes_via_mesh(lab, n)
            for n in (b, c)
            for p in (a, b, c)
            if p != n
        )

    wait_for(gone, 30, lambda: f"{LAN} still routed: {routes_via_mesh(lab, b)} {routes_via_mesh(lab, c)}")
    assert not lab.reach(c, host, 2)


def test_a_key_rotation_while_two_peers_ping_it_every_10_ms(lab: LabDriver) -> None:
    a, b, c = lab.members()[:3]
    old = lab.wg_device(a).public_key
    target = str(lab.mesh_address(a))
    for n in (b, c):
        assert lab.ping(n, a, 30)
    argv = ["ping", "-n", "-D", "-i", f"{PING_INTERVAL:g}", "-c", str(PINGS), "-W", "1", target]
    with ThreadPoolExecutor(2) as pool:
        pings = [pool.submit(lab.exec, n, argv, timeout=PINGS * PING_INTERVAL + 60) for n in (b, c)]
        time.sleep(PINGS * PING_INTERVAL / 2)
        rotated = lab.exec(a, ["ikto", "rotate-key"], timeout=30)
        outputs = [p.result() for p in pings]
    assert rotated.returncode == 0, rotated.stderr

    new = lab.wg_device(a).public_key
    assert new != old
    lab.wait_converged(30)  # every peer holds the new key, and not the old one
    for n, out in zip((b, c), outputs, strict=True):
        r = parse(out.stdout, PING_INTERVAL)
        # The figure the issue asks for (under 1 s; measured repeatedly by bench/rotation_gap.py).
        print(f"rotation seen from {n}: {r.lost}/{r.counted} lost, longest gap {r.longest_gap_s:.3f} s")
        assert r.counted > PINGS / 2, out.stdout[-500:]
        assert r.longest_gap_s < 10, f"{n}: pings to {a} stopped for {r.longest_gap_s} s"
