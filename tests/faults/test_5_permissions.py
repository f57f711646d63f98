"""Per-node NATS permissions (docs/nats-permissions.md): a node may write only its own key.
Scenario 14: real agents work under the generated config; writing another node's key is
refused; an agent whose key is not its own says so clearly and exits."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from ipaddress import ip_network

import pytest
from faultlab import BUCKET, FAST, unreachable

from ikto import ipam
from ikto.natsauth import authorization, node_user
from ikto_lab import LabError, NamespaceLab

pytestmark = pytest.mark.timeout(240)

STATE_DIR = os.environ.get("IKTO_FAULTS_PERM_STATE_DIR", "/run/ikto-faults-perm")
NATS = "198.18.0.1:4222"  # the lab's single server
# node -> (its NATS user's subnet, the subnet its config asks for)
NODES = {"p1": ("198.19.11.0/24", "198.19.11.0"), "p2": ("198.19.12.0/24", "198.19.12.0")}
ROGUE = ("p3", "198.19.13.0/24", "198.19.14.0")  # allowed .13, configured for .14


def url(user: str) -> str:
    return f"nats://{user}:{user}-pw@{NATS}"


@pytest.fixture(scope="module")
def perm_lab() -> Iterator[NamespaceLab]:
    users = [node_user(n, f"{n}-pw", net) for n, (net, _) in NODES.items()]
    users.append(node_user(ROGUE[0], f"{ROGUE[0]}-pw", ROGUE[1]))
    lab = NamespaceLab(
        STATE_DIR,
        name="ikto-fp",
        node_config=FAST,
        nats_config=authorization(BUCKET, ("admin", "admin-pw"), users),
    )
    lab.down()
    try:
        lab.up(0)
        lab.admin("create-bucket", url=url("admin"))  # nodes may not create it
        for n, (_, addr) in NODES.items():
            lab.add_node(n, private_address=addr, start=False)
            lab.set_config(n, nats_url=url(n), address_pinned=True, create_bucket=False)
        lab.start_agents(NODES)
        yield lab
    finally:
        lab.down()


def test_agents_work_under_per_node_permissions(perm_lab: NamespaceLab) -> None:
    lab = perm_lab
    lab.wait_converged(45)
    assert unreachable(lab, [("p1", "p2"), ("p2", "p1")]) == []
    time.sleep(3 * FAST["heartbeat_interval"])  # heartbeats and watch checks under the rules
    for n in NODES:
        health = lab.agent_status(n)["health"]
        assert health["ok"] and health["nats_connected"], f"{n}: {health}"
        log = lab.log_tail(n, 200)
        assert "permission" not in log.lower() and "heartbeat failed" not in log, log
    entries = lab.admin("dump", url=url("admin"))
    assert {e["value"]["name"] for e in entries.values()} == set(NODES)


def test_writing_another_nodes_key_is_refused(perm_lab: NamespaceLab) -> None:
    lab = perm_lab
    theirs = ipam.peer_key(ip_network(NODES["p2"][0]))
    dump = lab.admin("dump", url=url("admin"))
    assert theirs in dump, f"p2's entry is not in the bucket: {dump}"
    before = dump[theirs]
    hijack = {**before["value"], "advertise_address": "198.18.0.11"}
    with pytest.raises(LabError) as err:
        lab.admin("put", theirs, json.dumps(hijack), url=url("p1"))
    assert f"NATS refused publish to $KV.{BUCKET}.{theirs}: permission denied" in str(err.value)
    for forbidden in (["delete", theirs], ["delete-bucket"]):
        with pytest.raises(LabError, match=r"permission denied|Permissions Violation|timed out"):
            lab.admin(*forbidden, url=url("p1"))
    after = lab.admin("dump", url=url("admin"))[theirs]
    assert after["value"] == before["value"]
    lab.wait_converged(20)


def test_agent_reports_a_refused_claim_clearly(perm_lab: NamespaceLab) -> None:
    lab = perm_lab
    name, _, addr = ROGUE
    lab.add_node(name, private_address=addr, start=False)
    lab.set_config(name, nats_url=url(name), address_pinned=True, create_bucket=False)
    lab.spawn_agent(name)
    code = lab.wait_agent_exit(name, 30)
    log = lab.log_tail(name, 5)
    key = ipam.peer_key(ip_network(f"{addr}/24"))
    assert code == 1, log
    assert f"ikto: NATS refused publish to $KV.{BUCKET}.{key}: permission denied" in log, log
