"""One node in trouble, the mesh unharmed: cut off from NATS, its WireGuard UDP dropped,
its agent stopped, its clock wrong. Scenarios 5, 6, 8 and 9 of "Never lose a peer".

Scenario 7 (agent SIGKILLed and restarted: no churn) is tests/e2e/test_e2e_mesh.py::
test_agent_restart_causes_no_peer_churn[sigkill]; it is not repeated here.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from itertools import permutations

import pytest
from faultlab import (
    FAST,
    LIBFAKETIME,
    FaultLab,
    check_peers,
    devices,
    guarding,
    identities,
    join_one,
    peer_states,
    peer_view,
    pinging,
    unreachable,
)

pytestmark = pytest.mark.timeout(240)


def wait_for(what: str, cond, timeout: float = 20.0, pause: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(pause)


def test_agent_cut_off_from_nats_by_a_silent_firewall(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    victim, *others = list(ids)
    before = lab.wg_device(victim)
    lab.cut_from_nats(victim)
    try:
        # Long enough for the client to declare the link dead (3 missed pings of 5 s).
        deadline = time.monotonic() + 22
        while time.monotonic() < deadline:
            now = lab.wg_device(victim)
            assert now.peer_set() == before.peer_set(), f"{victim} changed WireGuard while cut off"
            time.sleep(1)
        assert lab.dropped_packets(victim) > 0, "the firewall dropped nothing"
        assert check_peers(lab, {n: ids[n] for n in others}, others) == []
        # The mesh changes while the victim cannot see it: a node joins.
        new = join_one(lab, wait=True)
        wait_for(
            f"{new} in the others' WireGuard",
            lambda: not check_peers(lab, identities(lab, [*others, new]), others),
        )
        assert lab.wg_device(victim).peer_set() == before.peer_set()
    finally:
        lab.unblock(victim)
    t0 = time.monotonic()
    lab.wait_converged(45)  # the victim learns about the new node; everyone has the victim again
    print(f"{victim} re-synced {time.monotonic() - t0:.1f} s after the firewall was lifted")
    assert unreachable(lab, [(victim, new), (new, victim)]) == []
    lab.leave_node(new)


def test_wireguard_udp_dropped_between_two_nodes(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    a, b, *_ = list(ids)
    lab.drop_wireguard(a, b)
    try:
        with (
            guarding(lab, ids) as guard,
            pinging(lab, [(x, y) for x, y in permutations(ids, 2) if {x, y} != {a, b}]) as pings,
        ):
            time.sleep(FAST["remove_after"] + 4)  # past remove_after: heartbeats keep entries alive
        assert not lab.ping(a, b, timeout=2), "the filter let the ping through"
        assert lab.dropped_packets(a) > 0
    finally:
        lab.unblock(a)
    assert guard.problems == [], "a peer was removed because its WireGuard traffic was dropped"
    assert pings.problems == []
    assert peer_states(lab, a)[b] == "ok" and peer_states(lab, b)[a] == "ok"
    assert unreachable(lab, [(a, b), (b, a)], timeout=15) == []


def test_agent_stopped_while_its_wireguard_works_stays_ok(healthy: FaultLab) -> None:
    """A stopped agent does not stop its node's WireGuard: the peers still handshake with it,
    so it is alive (docs/liveness.md: the data plane speaks first), shown ok by its handshakes,
    and never removed, however long the agent stays stopped."""
    lab = healthy
    ids = identities(lab)
    victim, *others = list(ids)
    lookers = others[:2]
    with guarding(lab, ids) as guard, pinging(lab, [(o, victim) for o in others]) as pings:
        lab.pause_agent(victim)
        try:
            deadline = time.monotonic() + FAST["remove_after"] + 4
            while time.monotonic() < deadline:
                seen = {o: peer_view(lab, o)[victim] for o in lookers}
                assert all(p["state"] == "ok" for p in seen.values()), seen
                time.sleep(1)
            # long past its last presence record: what keeps it ok is its handshakes
            assert all(p["evidence"] == "handshake" for p in seen.values()), seen
        finally:
            lab.resume_agent(victim)
    assert guard.problems == []
    assert pings.problems == [], "the data plane broke while the agent was stopped"
    assert all(s == "ok" for s in peer_states(lab, victim).values())
    lab.wait_converged(30)


def test_node_silent_past_stale_then_back(healthy: FaultLab) -> None:
    """The node itself goes silent (agent stopped, its WireGuard traffic dropped): it is shown
    stale, stays in everyone's WireGuard until remove_after, and is ok again when it returns."""
    lab = healthy
    ids = identities(lab)
    victim, *others = list(ids)
    lookers = others[:2]
    with guarding(lab, ids) as guard:
        lab.pause_agent(victim)
        lab.silence(victim)
        try:
            wait_for(
                f"{victim} shown stale",
                lambda: all(peer_states(lab, o)[victim] == "stale" for o in lookers),
                timeout=FAST["remove_after"] - 8,
            )
            # Stale is shown, not acted on: still in everyone's WireGuard (checked by guard).
            time.sleep(1)
        finally:
            lab.unblock(victim)
            lab.resume_agent(victim)
        wait_for(f"{victim} ok again", lambda: all(peer_states(lab, o)[victim] == "ok" for o in lookers), 10)
    assert guard.problems == []
    # Its own view comes back too, after its next look; a direction whose session expired during
    # the silence needs a handshake first (a retry every REKEY_TIMEOUT, 5 s).
    seen: dict[str, str] = {}

    def victim_sees_all_ok() -> bool:
        seen.clear()
        seen.update(peer_states(lab, victim))
        return set(seen.values()) == {"ok"}

    try:
        wait_for(f"{victim} sees everyone ok", victim_sees_all_ok, 10)
    except pytest.fail.Exception:
        pytest.fail(f"{victim} still sees {seen}")
    assert unreachable(lab, [(o, victim) for o in others]) == []
    lab.wait_converged(30)


def _log_clock_offset(lab: FaultLab, node: str) -> float:
    """Seconds the agent's log clock is ahead of ours (its last `time=` stamp vs now)."""
    stamps = re.findall(r"^time=(\S+)", lab.log_tail(node, 200), re.M)
    assert stamps, f"{node} logged nothing"
    return (datetime.fromisoformat(stamps[-1]) - datetime.now()).total_seconds()


def test_clock_skewed_by_ten_minutes(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    fast, slow, *_ = list(ids)
    skew = {fast: "+600", slow: "-600"}
    try:
        for node, offset in skew.items():
            lab.stop_agent(node)
            env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
            lab.start_agent(node, env=env)
        time.sleep(1)
        assert _log_clock_offset(lab, fast) > 500 and _log_clock_offset(lab, slow) < -500, (
            "faketime did not apply"
        )
        before = devices(lab)
        with guarding(lab, ids) as guard:
            time.sleep(FAST["remove_after"] + 4)
        assert guard.problems == []
        for node in ids:
            states = peer_states(lab, node)
            assert set(states.values()) == {"ok"}, f"{node} sees {states}"
            assert lab.wg_device(node).peer_set() == before[node].peer_set()
    finally:
        for node in skew:
            if lab.agent_running(node):
                lab.stop_agent(node)
            lab.start_agent(node)
    lab.wait_converged(30)
