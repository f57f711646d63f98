"""Liveness from evidence, against a real nats-server (2.15 and 2.9) with the OS seam faked:
the fake WireGuard's counters stand in for a peer's packets. Timings are shrunk."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from ipaddress import ip_network

from fakes import FakeWg, until
from test_agent import entry

from ikto import ipam, keys, views
from ikto.api import call
from ikto.claim import AddressTakenError, claim
from ikto.models import Peer

FAST = {"heartbeat_interval": 1.0, "stale_after": 2.0, "remove_after": 4.0, "reclaim_after": 4.0,
        "persistent_keepalive": 1}


async def put_entry(store, e) -> int:
    return await store.put(ipam.peer_key(ip_network(e["allowed_ip"])), json.dumps(e).encode())


async def handshaking(wg: FakeWg, public_key: str, stop: asyncio.Event, endpoint: str | None = None) -> None:
    """Play a peer that answers on the data plane: its counters grow, its handshake renews."""
    while not stop.is_set():
        p = wg.peers.get(public_key)
        if p is not None:
            wg.peers[public_key] = replace(
                p, rx_bytes=p.rx_bytes + 92, latest_handshake=int(time.time()),
                endpoint=endpoint or p.endpoint,
            )
        await asyncio.sleep(0.2)


async def test_a_v03_node_that_handshakes_is_kept_past_remove_and_reclaim(
    start_agent, open_store, make_config
):
    store = await open_store()
    v03 = entry("fd10:b3::/48", name="go-node")  # written once, as v0.3 writes it, never again
    await put_entry(store, v03)
    agent, wg = await start_agent("fd10:a1::", **FAST)
    await until(lambda: v03["public_key"] in wg.peers)
    stop = asyncio.Event()
    hs = asyncio.create_task(handshaking(wg, v03["public_key"], stop))
    try:
        await asyncio.sleep(FAST["reclaim_after"] + 4)
        assert v03["public_key"] in wg.peers  # never removed while it handshakes
        view = {p["name"]: p for p in await views.peers(agent)}
        assert view["go-node"]["state"] == "ok" and view["go-node"]["evidence"] == "handshake"
        # a newcomer wanting its address finds it alive: our agent vouches for it in seen.<id>
        seen = await store.get(ipam.seen_key(ipam.peer_key(ip_network("fd10:b3::/48"))))
        assert seen is not None and json.loads(seen.value)["by"] == agent.config.name
        cfg = make_config(store._servers[0], private_address="fd10:b3::")
        pub = keys.public_key(keys.read_private_key(cfg.private_key_path))
        me = Peer("newcomer", pub, cfg.advertise_address, cfg.subnet, 51820, ())
        try:
            await claim(store, me, mesh=cfg.mesh_cidr, prefix=48, pinned=True, reclaim_after=4.0)
            raise AssertionError("a live v0.3 node's address was reclaimed")
        except AddressTakenError:
            pass
    finally:
        stop.set()
        await hs


async def test_a_learned_endpoint_survives_resyncs(start_agent, open_store):
    store = await open_store()
    natted = entry("fd10:b4::/48", name="natted", adv="192.168.7.7")
    await put_entry(store, natted)
    agent, wg = await start_agent("fd10:a2::", **FAST)
    await until(lambda: natted["public_key"] in wg.peers)
    stop = asyncio.Event()
    learned = "198.18.77.1:40123"  # where its packets come from: its NAT's public mapping
    hs = asyncio.create_task(handshaking(wg, natted["public_key"], stop, endpoint=learned))
    try:
        for _ in range(3):  # several full comparisons (every second at this size)
            await agent.applier.full_reconcile()
            await asyncio.sleep(1.0)
            assert wg.peers[natted["public_key"]].endpoint == learned
        # its entry changes (a new advertise address): the working session still wins
        await put_entry(store, {**natted, "advertise_address": "192.168.7.8"})
        await asyncio.sleep(1.5)
        assert wg.peers[natted["public_key"]].endpoint == learned
    finally:
        stop.set()
        await hs
    sets = [c for p in wg.applies() for c in p.set if c.public_key == natted["public_key"] and c.endpoint]
    assert all(c.endpoint != "192.168.7.7:51820" for c in sets[1:]), "the advertised endpoint came back"


async def test_presence_keeps_a_peer_we_cannot_reach_alive(start_agent, open_store):
    """Two ikto agents whose data plane never works (fake WireGuard): each learns from the
    other's presence record that it is alive, so neither shows the other stale or removes it."""
    a, wga = await start_agent("fd10:a3::", **FAST)
    b, wgb = await start_agent("fd10:a4::", **FAST)
    await until(lambda: b.public_key in wga.peers and a.public_key in wgb.peers)
    await asyncio.sleep(FAST["remove_after"] + 3)
    assert b.public_key in wga.peers and a.public_key in wgb.peers
    for agent, other in ((a, b), (b, a)):
        view = {p["public_key"]: p for p in await views.peers(agent)}[other.public_key]
        assert view["state"] == "ok" and view["evidence"] in ("presence", "entry"), view
        assert agent.presence.needed  # a peer it cannot hear is reading its presence
    store = await open_store()
    rec = await store.get(ipam.alive_key(a.membership.key))
    assert rec is not None and json.loads(rec.value)["name"] == a.config.name


async def test_an_idle_mesh_writes_nothing_under_peers(start_agent, open_store):
    """No periodic rewrites of the watched keys: an idle mesh costs watchers nothing."""
    a, wga = await start_agent("fd10:a5::", **FAST)
    b, wgb = await start_agent("fd10:a6::", **FAST)
    await until(lambda: b.public_key in wga.peers and a.public_key in wgb.peers)
    stop = asyncio.Event()
    pairs = ((wga, b.public_key), (wgb, a.public_key))
    hs = [asyncio.create_task(handshaking(w, pk, stop)) for w, pk in pairs]
    try:
        await asyncio.sleep(2)
        store = await open_store()
        before = {k: (await store.get(k)).revision for k in (a.membership.key, b.membership.key)}
        await asyncio.sleep(5 * FAST["heartbeat_interval"])
        after = {k: (await store.get(k)).revision for k in before}
        assert after == before
        assert not a.presence.needed and not b.presence.needed
    finally:
        stop.set()
        await asyncio.gather(*hs)


async def test_the_mesh_view_names_the_pair_that_cannot_reach_each_other(start_agent):
    """Three agents; b and c never hear each other on the data plane: every node's report,
    read from any node, says so, and the report clears when they do."""
    a, wga = await start_agent("fd10:c7::", serve_api=True, **FAST)
    b, wgb = await start_agent("fd10:c8::", **FAST)
    c, wgc = await start_agent("fd10:c9::", **FAST)
    wgs = {a.public_key: wga, b.public_key: wgb, c.public_key: wgc}
    await until(lambda: all(len(w.peers) == 2 for w in wgs.values()), 10)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(handshaking(w, pk, stop)) for w, pk in
             ((wga, b.public_key), (wga, c.public_key), (wgb, a.public_key), (wgc, a.public_key))]

    try:
        async def pairs() -> set[tuple[str, str]]:
            m = await asyncio.to_thread(call, a.config.admin_socket, "GET", "/v1/mesh")
            return {tuple(p) for p in m["unreachable_pairs"]}

        deadline = asyncio.get_running_loop().time() + 20
        want = {(b.config.name, c.config.name), (c.config.name, b.config.name)}
        while (got := await pairs()) != want:
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.5)
        m = await asyncio.to_thread(call, a.config.admin_socket, "GET", "/v1/mesh")
        assert m["reporting"] == 3 and {n["name"] for n in m["nodes"]} == {x.config.name for x in (a, b, c)}
        tasks.extend(asyncio.create_task(handshaking(w, pk, stop)) for w, pk in
                     ((wgb, c.public_key), (wgc, b.public_key)))
        deadline = asyncio.get_running_loop().time() + 20
        while got := await pairs():
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
