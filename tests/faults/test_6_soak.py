"""Soak: ten nodes, one join or leave a second. IKTO_SOAK_SECONDS sets the length: 60 in the
normal suite, 300 for `make soak`. Four core nodes never leave: no core peer may ever be
lost, no peer may ever hold AllowedIPs other than its node's subnet, and pings between the
core nodes must never fail; after the churn the mesh converges and every pair pings."""

from __future__ import annotations

import os
import random
import time
from itertools import permutations

import pytest
from faultlab import CONVERGE, Background, FaultLab, identities, join_one, pinging, unreachable

SECONDS = float(os.environ.get("IKTO_SOAK_SECONDS", "60"))
NODES, CORE = 10, 4

pytestmark = pytest.mark.timeout(SECONDS + 300)


def test_soak_one_join_or_leave_per_second(healthy: FaultLab) -> None:
    lab = healthy
    while len(lab.members()) < NODES:
        join_one(lab, wait=True)
    lab.wait_converged(60)
    members = lab.members()
    core, churners = members[:CORE], members[CORE:NODES]
    ids = identities(lab, members)  # a node keeps its key and subnet when it rejoins
    subnet = dict(ids.values())
    name = {pk: n for n, (pk, _) in ids.items()}

    def check() -> list[str]:
        out = []
        for a in core:
            peers = lab.wg_device(a).peers
            out += [f"{a}: lost core peer {b}" for b in core if b != a and ids[b][0] not in peers]
            for pk, p in peers.items():
                nets = [str(x) for x in p.allowed_ips]
                if pk in subnet and nets != [subnet[pk]]:
                    out.append(f"{a}: {name[pk]} has allowed-ips {nets}, not {subnet[pk]}")
        return out

    rng = random.Random(int(os.environ.get("IKTO_SOAK_SEED", "0")) or None)
    ops = {"join": 0, "leave": 0}
    with Background(check, pause=0.5) as guard, pinging(lab, list(permutations(core, 2))) as pings:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            t = time.monotonic()
            inside = [n for n in churners if n in lab.members()]
            outside = [n for n in churners if n not in inside]
            if outside and (len(inside) < 2 or rng.random() < 0.5):
                lab.start_agent(rng.choice(outside))
                ops["join"] += 1
            else:
                lab.leave_node(rng.choice(inside))
                ops["leave"] += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
        print(f"soak {SECONDS:g} s: {ops}, {pings.rounds} ping rounds, {guard.rounds} checks")
    assert guard.problems == [], guard.problems[:20]
    assert pings.problems == [], f"pings between core nodes failed: {pings.problems[:20]}"
    assert sum(ops.values()) >= SECONDS * 0.5, f"too few changes: {ops}"
    lab.wait_converged(CONVERGE)
    final = lab.members()
    assert identities(lab, final) == {n: ids[n] for n in final}
    hub = core[0]
    spokes = [n for n in final if n != hub]
    assert unreachable(lab, [(hub, n) for n in spokes] + [(n, hub) for n in spokes]) == []
