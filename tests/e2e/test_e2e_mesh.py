"""End to end: real agents in a lab, real wireguard-go, pings across the mesh."""

from __future__ import annotations

import json
import signal
import time
from itertools import permutations

import pytest

from ikto.models import WgDevice
from ikto_lab import LabDriver
from ikto_lab.driver import CONFIG_PATH

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CONVERGE = 45.0  # seconds; converging normally takes a few


def unreachable(lab: LabDriver, nodes: list[str], timeout: float = 10.0) -> list[str]:
    """Every ordered pair of nodes whose ping over the mesh goes unanswered."""
    return [f"{a}->{b}" for a, b in permutations(nodes, 2) if not lab.ping(a, b, timeout)]


def ensure_member(lab: LabDriver, name: str) -> str:
    """name as a running member of the mesh (added if an earlier test did not)."""
    if name not in lab.nodes():
        lab.add_node(name)
    elif not lab.agent_running(name):
        lab.start_agent(name)
    lab.wait_converged(CONVERGE)
    return name


def assert_no_churn(before: dict[str, WgDevice], after: dict[str, WgDevice]) -> None:
    """Same peers (keys, endpoints, allowed-ips) everywhere, and no peer was re-created.

    wireguard-go zeroes a peer's counters when it is removed and added back, so counters
    going down reveal churn that happened between two looks.
    """
    for node, dev in before.items():
        now = after[node]
        assert now.public_key == dev.public_key, f"{node}: device key changed"
        assert now.peer_set() == dev.peer_set(), f"{node}: peers changed"
        for key, peer in dev.peers.items():
            p = now.peers[key]
            assert p.rx_bytes >= peer.rx_bytes and p.tx_bytes >= peer.tx_bytes, (
                f"{node}: peer {key[:8]}… counters went back ({peer.rx_bytes}->{p.rx_bytes} rx): "
                "it was removed and re-added"
            )


def test_full_mesh_ping(lab: LabDriver) -> None:
    members = lab.members()
    assert len(members) >= 3
    lab.wait_converged(CONVERGE)
    assert unreachable(lab, members) == []


def test_fourth_node_joins_and_everyone_reaches_it(lab: LabDriver) -> None:
    before = lab.members()
    new = lab.add_node("node4")
    lab.wait_converged(CONVERGE)
    key = lab.wg_device(new).public_key
    for node in before:
        assert key in lab.wg_device(node).peers, f"{node} did not add {new}"
    assert set(lab.wg_device(new).peers) == {lab.wg_device(n).public_key for n in before}
    bad = [f"{a}->{b}" for n in before for a, b in ((n, new), (new, n)) if not lab.ping(a, b)]
    assert bad == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_agent_restart_causes_no_peer_churn(lab: LabDriver, sig: signal.Signals) -> None:
    lab.wait_converged(CONVERGE)
    members = lab.members()
    victim = members[1]
    assert unreachable(lab, members) == []  # traffic on every peer, so counters are > 0
    before = {n: lab.wg_device(n) for n in members}

    code = lab.stop_agent(victim, sig)
    if sig == signal.SIGTERM:
        assert code == 0, f"agent exited {code} on SIGTERM"
    assert_no_churn(before, {n: lab.wg_device(n) for n in members})  # interface left in place
    lab.start_agent(victim)

    # Watch long enough for the restarted agent to resync with the bucket.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert_no_churn(before, {n: lab.wg_device(n) for n in members})
        time.sleep(0.25)
    lab.wait_converged(CONVERGE)
    assert [n for n in members if not lab.ping(victim, n) and n != victim] == []


def test_graceful_leave_removes_the_node_everywhere(lab: LabDriver) -> None:
    leaver = ensure_member(lab, "node4")
    key = lab.wg_device(leaver).public_key
    code = lab.leave_node(leaver)
    assert code in (0, None), f"agent exited {code} after leave"
    assert not lab.agent_running(leaver)
    lab.wait_converged(CONVERGE)  # also fails on a peer nobody should have
    for node in lab.members():
        assert key not in lab.wg_device(node).peers, f"{node} still has {leaver}"
    assert unreachable(lab, lab.members()) == []


def test_address_conflict_moves_the_newcomer(lab: LabDriver) -> None:
    holder = lab.members()[0]
    taken = lab.mesh_address(holder)
    new = lab.add_node("node5", private_address=str(taken), start=False)
    conf = json.loads(lab.exec(new, ["cat", CONFIG_PATH], check=True).stdout)
    assert conf["private_address"] == str(taken)
    lab.start_agent(new)
    lab.wait_converged(CONVERGE)
    assert lab.mesh_address(holder) == taken, f"{holder} lost its address {taken}"
    assert lab.mesh_address(new) != taken, f"{new} kept the taken address {taken}"
    others = [n for n in lab.members() if n != new]
    bad = [f"{a}->{b}" for n in others for a, b in ((n, new), (new, n)) if not lab.ping(a, b)]
    assert bad == []


def test_mesh_forwards_while_nats_is_down(lab: LabDriver) -> None:
    lab.wait_converged(CONVERGE)
    members = lab.members()
    addrs = {n: lab.mesh_address(n) for n in members}
    assert unreachable(lab, members) == []

    lab.stop_nats()
    try:
        failures: list[str] = []
        rounds = 0
        deadline = time.monotonic() + 6
        while rounds < 2 or time.monotonic() < deadline:  # at least two full rounds
            rounds += 1
            failures += [
                f"round {rounds}: {a}->{b}"
                for a, b in permutations(members, 2)
                if not lab.ping_once(a, addrs[b], wait=2)
            ]
        stopped = [n for n in members if not lab.agent_running(n)]
    finally:
        lab.start_nats()
    assert rounds >= 2
    assert failures == [], f"pings lost while NATS was down: {failures}"
    assert stopped == [], f"agents exited while NATS was down: {stopped}"

    # The control plane works again: a node joining after the restart reaches everyone.
    new = lab.add_node("node6")
    lab.wait_converged(90)
    bad = [f"{a}->{b}" for n in members for a, b in ((n, new), (new, n)) if not lab.ping(a, b)]
    assert bad == []
