"""The control plane fails, the mesh does not: NATS servers killed, bounced and restarted,
the bucket deleted. Scenarios 1-4 of "Never lose a peer"."""

from __future__ import annotations

import time
from itertools import permutations

import pytest
from faultlab import (
    BUCKET,
    CONVERGE,
    FaultLab,
    check_peers,
    guarding,
    identities,
    join_one,
    pinging,
    unreachable,
)

pytestmark = pytest.mark.timeout(240)

STREAM = f"KV_{BUCKET}"
# Seconds from the fault to a new node converged: writes resume 9-16 s after the stream
# leader dies (docs/facts.md, "JetStream cluster failover").
WRITES_RESUME = 25.0


def joins_within(lab: FaultLab, since: float, limit: float) -> tuple[str, float]:
    """A node joins; wait until the whole mesh has it; (its name, seconds since `since`)."""
    new = join_one(lab)
    deadline = since + limit
    while True:
        if not lab.agent_running(new):
            pytest.fail(f"the joining agent on {new} exited:\n{lab.log_tail(new, 15)}")
        problems = lab.convergence_problems()
        if not problems:
            return new, time.monotonic() - since
        if time.monotonic() > deadline:
            pytest.fail(f"{new} did not join within {limit:g} s of the fault: {'; '.join(problems)}")
        time.sleep(0.3)


@pytest.mark.parametrize("which", ["stream-leader", "meta-leader"])
def test_one_server_of_three_killed(healthy: FaultLab, which: str) -> None:
    lab = healthy
    ids = identities(lab)
    meta, stream = lab.nats_leaders(STREAM)
    victim = stream if which == "stream-leader" else meta
    assert victim, f"the cluster names no {which} ({meta=}, {stream=})"
    pairs = list(permutations(ids, 2))
    with guarding(lab, ids) as guard, pinging(lab, pairs) as pings:
        t0 = time.monotonic()
        lab.kill_nats_server(victim)
        try:
            new, took = joins_within(lab, t0, WRITES_RESUME)
            print(f"{which} {victim} killed: {new} converged after {took:.1f} s")
            _, stream_after = lab.nats_leaders(STREAM)
            assert stream_after and stream_after != victim
        finally:
            lab.start_nats_server(victim)
    assert guard.problems == [], "peers lost or wrong while a server was down"
    assert pings.problems == [] and pings.rounds >= 3, f"pings lost: {pings.problems}"
    assert unreachable(lab, [(a, new) for a in ids] + [(new, a) for a in ids]) == []
    lab.leave_node(new)


def test_cluster_bounced_repeatedly(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    bounces = 0
    with guarding(lab, ids) as guard, pinging(lab, list(permutations(ids, 2))) as pings:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The whole cluster, then one server at a time.
            if bounces % 2 == 0:
                lab.stop_nats()
                time.sleep(2)
                lab.start_nats()
            else:
                name = lab.nats_servers()[bounces // 2 % 3].name
                lab.kill_nats_server(name)
                time.sleep(2)
                lab.start_nats_server(name)
            bounces += 1
            time.sleep(2)
        lab.wait_converged(CONVERGE)
    assert bounces >= 4
    assert guard.problems == [], "a live peer was removed or got wrong AllowedIPs"
    assert pings.problems == [], f"pings lost during {bounces} bounces: {pings.problems}"
    assert not [n for n in ids if not lab.agent_running(n)]
    new, _ = joins_within(lab, time.monotonic(), CONVERGE)
    assert check_peers(lab, ids) == []
    lab.leave_node(new)


def test_single_server_restarted(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    _, leader = lab.nats_leaders(STREAM)
    assert leader
    with guarding(lab, ids) as guard:
        lab.kill_nats_server(leader, sig=15)
        t0 = time.monotonic()
        lab.start_nats_server(leader)
        new, took = joins_within(lab, t0, WRITES_RESUME)
        print(f"{leader} restarted: {new} converged after {took:.1f} s")
    assert guard.problems == []
    assert unreachable(lab, [(a, new) for a in ids]) == []
    lab.leave_node(new)


# The watch rebuilt after the bucket is recreated loads a nearly empty snapshot; the agent
# holds removals for three heartbeats so that live peers re-assert before anything is removed.
def test_bucket_deleted_and_recreated(healthy: FaultLab) -> None:
    lab = healthy
    ids = identities(lab)
    before = lab.admin("stream-info")["ident"]
    with guarding(lab, ids) as guard, pinging(lab, list(permutations(ids, 2))) as pings:
        t0 = time.monotonic()
        lab.admin("delete-bucket")
        lab.admin("create-bucket")  # an operator's "fix": the bucket is back, empty
        assert lab.admin("stream-info")["ident"] != before
        # Every agent notices and re-asserts its entry into the new bucket.
        deadline = t0 + 20
        while True:
            names = {e["value"]["name"] for e in lab.admin("dump").values() if isinstance(e["value"], dict)}
            if names >= set(lab.members()):
                break
            assert time.monotonic() < deadline, f"entries missing after 20 s: {set(lab.members()) - names}"
            time.sleep(0.5)
        print(f"all entries back {time.monotonic() - t0:.1f} s after the bucket was recreated")
        new, _ = joins_within(lab, time.monotonic(), CONVERGE)
    assert guard.problems == []
    assert pings.problems == []
    assert unreachable(lab, [(a, new) for a in ids] + [(new, a) for a in ids]) == []
    lab.leave_node(new)
