"""Routed networks against a real nats-server (2.15 and 2.9) with the OS seam faked: reserved
like addresses, applied only while reserved by their announcer, refused on conflict, withdrawn."""

from __future__ import annotations

import json
from ipaddress import ip_network

import pytest
from fakes import until
from test_agent import entry

from ikto import ipam, views
from ikto.config import ConfigError
from ikto.routes import route_key

FAST = {"heartbeat_interval": 1.0, "stale_after": 2.0, "remove_after": 4.0, "reclaim_after": 4.0}
LAN = ip_network("10.88.0.0/24")


async def put(store, e) -> None:
    await store.put(ipam.peer_key(ip_network(e["allowed_ip"])), json.dumps(e).encode())


async def reserve(store, net, holder_net: str) -> None:
    holder = ipam.peer_key(ip_network(holder_net))
    await store.put(route_key(net), json.dumps({"holder": holder, "name": "x"}).encode())


async def test_our_routes_are_reserved_and_announced(start_agent, open_store):
    agent, _ = await start_agent("fd10:e1::", routes=["10.77.0.0/24"], **FAST)
    store = await open_store()
    mine = json.loads((await store.get(agent.membership.key)).value)
    assert mine["routes"] == ["10.77.0.0/24"]
    held = json.loads((await store.get(route_key(ip_network("10.77.0.0/24")))).value)
    assert held["holder"] == agent.membership.key
    # a second node wanting the same network is refused: it does not announce it
    other, _ = await start_agent("fd10:e2::", routes=["10.77.0.0/24"], **FAST)
    theirs = json.loads((await store.get(other.membership.key)).value)
    assert "routes" not in theirs
    assert "reserved by" in views.node(other)["routes_refused"]["10.77.0.0/24"]
    # leaving gives the reservation back
    await agent.leave(False)
    assert await store.get(route_key(ip_network("10.77.0.0/24"))) is None


async def test_a_reserved_network_is_applied_a_stolen_one_refused_a_withdrawn_one_removed(
    start_agent, open_store
):
    store = await open_store()
    b = {**entry("fd10:e4::/48", name="site-b"), "routes": [str(LAN)]}
    c = {**entry("fd10:e5::/48", name="thief"), "routes": [str(LAN)]}
    await reserve(store, LAN, "fd10:e4::/48")
    await put(store, b)
    agent, wg = await start_agent("fd10:e3::", **FAST)
    await until(lambda: b["public_key"] in wg.peers and LAN in wg.routed)
    assert wg.peers[b["public_key"]].allowed_ips == ("fd10:e4::/48", str(LAN))
    await put(store, c)  # announces B's network: it holds no reservation for it
    await until(lambda: c["public_key"] in wg.peers)
    await agent.applier.full_reconcile()
    assert wg.peers[c["public_key"]].allowed_ips == ("fd10:e5::/48",)
    assert wg.peers[b["public_key"]].allowed_ips == ("fd10:e4::/48", str(LAN))  # not hijacked
    reasons = [r["reason"] for r in views.rejected(agent)]
    assert any("routed network 10.88.0.0/24: not reserved by this node" in r for r in reasons), reasons
    await put(store, {k: v for k, v in b.items() if k != "routes"})  # B withdraws it
    await until(lambda: wg.peers[b["public_key"]].allowed_ips == ("fd10:e4::/48",) and LAN not in wg.routed)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"routes": ["fd10:9::/48"]}, "overlaps the mesh"),
        ({"routes": ["0.0.0.0/0"]}, "default route: set exit_node"),
        ({"routes": ["10.0.0.0/16", "10.0.1.0/24"]}, "overlaps 10.0.0.0/16"),
        ({"routes": ["10.0.0.1/16"]}, "not a network in CIDR form"),
    ],
)
def test_bad_routes_are_refused_by_the_config(make_config, nats_server, fields, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config(nats_server.url, **fields)


def test_an_exit_node_may_announce_a_default_route(make_config, nats_server):
    cfg = make_config(nats_server.url, routes=["0.0.0.0/0"], exit_node=True)
    assert [str(r) for r in cfg.routes] == ["0.0.0.0/0"]


async def test_a_network_taken_over_moves_to_its_new_holder_without_a_timer(start_agent, open_store):
    """B holds LAN and goes silent; C takes the reservation over and announces LAN. B's entry
    still announces it, but the reservation is read again when C's announcement arrives."""
    store = await open_store()
    b = {**entry("fd10:e7::/48", name="old-site"), "routes": [str(LAN)]}
    c = {**entry("fd10:e8::/48", name="new-site"), "routes": [str(LAN)]}
    await reserve(store, LAN, "fd10:e7::/48")
    await put(store, b)
    _, wg = await start_agent("fd10:e6::", **FAST)
    await until(lambda: b["public_key"] in wg.peers and LAN in wg.routed)
    await reserve(store, LAN, "fd10:e8::/48")  # the takeover (reservations.py does it with a CAS)
    await put(store, c)
    await until(lambda: c["public_key"] in wg.peers and str(LAN) in wg.peers[c["public_key"]].allowed_ips)
    assert wg.peers[b["public_key"]].allowed_ips == ("fd10:e7::/48",)
    assert LAN in wg.routed
