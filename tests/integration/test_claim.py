"""Claiming an address against a real nats-server (each test runs on 2.15 and 2.9)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from ipaddress import ip_address, ip_network

import pytest

from ikto import ipam
from ikto.claim import AddressTakenError, claim
from ikto.keys import generate_private_key, public_key
from ikto.models import Peer
from ikto.store import Store, StoreError

pytestmark = pytest.mark.integration

OpenStore = Callable[..., Awaitable[Store]]
MESH = ip_network("fd10::/16")
PREFIX = 48
SUBNET = ip_network("fd10:1234::/48")


def make_peer(name: str, subnet: ipam.Network = SUBNET) -> Peer:
    return Peer(
        name=name,
        public_key=public_key(generate_private_key()),
        advertise_address=ip_address("192.0.2.10"),
        allowed_ip=subnet,
        wg_port=51820,
    )


async def stored(store: Store, subnet: ipam.Network) -> dict[str, object]:
    entry = await store.get(ipam.peer_key(subnet))
    assert entry is not None and entry.value is not None
    return json.loads(entry.value)  # type: ignore[no-any-return]


async def test_fresh_claim(open_store: OpenStore) -> None:
    store = await open_store()
    me = make_peer("a")
    got, rev = await claim(store, me, mesh=MESH, prefix=PREFIX, pinned=False)
    assert got == me and rev > 0
    assert await stored(store, SUBNET) == me.to_entry()


async def test_restart_with_same_key_updates_in_place(open_store: OpenStore) -> None:
    store = await open_store()
    me = make_peer("a")
    _, rev1 = await claim(store, me, mesh=MESH, prefix=PREFIX, pinned=True)
    # Restarted with a new name and endpoint port: same key, so the entry is replaced.
    again = Peer(me.name + "-new", me.public_key, me.advertise_address, me.allowed_ip, 51821)
    got, rev2 = await claim(store, again, mesh=MESH, prefix=PREFIX, pinned=True)
    assert got == again and got.allowed_ip == SUBNET and rev2 > rev1
    assert await stored(store, SUBNET) == again.to_entry()


async def test_conflict_moves_to_another_subnet(open_store: OpenStore) -> None:
    store = await open_store()
    holder = make_peer("holder")
    await claim(store, holder, mesh=MESH, prefix=PREFIX, pinned=False)
    other = ip_network("fd10:beef::/48")
    me = make_peer("me")
    got, rev = await claim(store, me, mesh=MESH, prefix=PREFIX, pinned=False, pick=lambda: other)
    assert got == Peer(me.name, me.public_key, me.advertise_address, other, me.wg_port)
    assert got != me and rev > 0
    assert await stored(store, SUBNET) == holder.to_entry()  # untouched
    assert await stored(store, other) == got.to_entry()


async def test_conflict_with_random_pick(open_store: OpenStore) -> None:
    store = await open_store()
    await claim(store, make_peer("holder"), mesh=MESH, prefix=PREFIX, pinned=False)
    got, _ = await claim(store, make_peer("me"), mesh=MESH, prefix=PREFIX, pinned=False)
    assert got.allowed_ip != SUBNET
    assert got.allowed_ip.subnet_of(MESH) and got.allowed_ip.prefixlen == PREFIX  # type: ignore[arg-type]


async def test_pinned_conflict_names_the_holder(open_store: OpenStore) -> None:
    store = await open_store()
    holder = make_peer("holder")
    await claim(store, holder, mesh=MESH, prefix=PREFIX, pinned=False)
    with pytest.raises(AddressTakenError) as err:
        await claim(store, make_peer("me"), mesh=MESH, prefix=PREFIX, pinned=True)
    msg = str(err.value)
    assert msg.startswith(f"address {SUBNET} is taken by node holder (public key {holder.public_key})")
    assert "address_pinned" in msg and "private_address" in msg
    assert err.value.exit_code == 2


async def test_gives_up_after_attempts(open_store: OpenStore) -> None:
    store = await open_store()
    taken = [ip_network(f"fd10:{i + 1:x}::/48") for i in range(3)]
    for subnet in taken:
        await claim(store, make_peer("holder", subnet), mesh=MESH, prefix=PREFIX, pinned=True)
    picks = iter(taken[1:])
    with pytest.raises(StoreError, match="3 subnets were all taken"):
        await claim(
            store, make_peer("me", taken[0]), mesh=MESH, prefix=PREFIX, pinned=False,
            attempts=3, pick=lambda: next(picks),
        )  # fmt: skip


async def test_concurrent_claims_exactly_one_wins(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(10)]
    peers = [make_peer(f"n{i}") for i in range(10)]
    results = await asyncio.gather(
        *(claim(s, p, mesh=MESH, prefix=PREFIX, pinned=True) for s, p in zip(stores, peers, strict=True)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, tuple)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(e, AddressTakenError) for e in losers), losers
    winner = winners[0][0]
    assert await stored(stores[0], SUBNET) == winner.to_entry()
    assert all(f"node {winner.name} " in str(e) for e in losers)


async def test_concurrent_unpinned_claims_all_get_distinct_subnets(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(10)]
    peers = [make_peer(f"n{i}") for i in range(10)]
    results = await asyncio.gather(
        *(claim(s, p, mesh=MESH, prefix=PREFIX, pinned=False) for s, p in zip(stores, peers, strict=True))
    )
    subnets = [peer.allowed_ip for peer, _ in results]
    assert len(set(subnets)) == 10 and SUBNET in subnets
    for peer, _ in results:
        assert await stored(stores[0], peer.allowed_ip) == peer.to_entry()


async def test_v03_entry_of_another_node_counts_as_taken(open_store: OpenStore) -> None:
    store = await open_store()
    v03 = {
        "name": "old-go-node",
        "public_key": public_key(generate_private_key()),
        "advertise_address": "198.51.100.7",
        "allowed_ip": str(SUBNET),
        "wg_port": 51820,
    }
    await store.put(ipam.peer_key(SUBNET), json.dumps(v03).encode())
    with pytest.raises(AddressTakenError, match="taken by node old-go-node"):
        await claim(store, make_peer("me"), mesh=MESH, prefix=PREFIX, pinned=True)
    got, _ = await claim(store, make_peer("me"), mesh=MESH, prefix=PREFIX, pinned=False)
    assert got.allowed_ip != SUBNET
    assert await stored(store, SUBNET) == v03


async def test_invalid_entry_counts_as_taken(open_store: OpenStore) -> None:
    store = await open_store()
    await store.put(ipam.peer_key(SUBNET), b"not json {")
    with pytest.raises(AddressTakenError, match="taken by an entry that is not valid JSON"):
        await claim(store, make_peer("me"), mesh=MESH, prefix=PREFIX, pinned=True)
    entry = await store.get(ipam.peer_key(SUBNET))
    assert entry is not None and entry.value == b"not json {"


async def test_deleted_entry_can_be_claimed(open_store: OpenStore) -> None:
    store = await open_store()
    await claim(store, make_peer("gone"), mesh=MESH, prefix=PREFIX, pinned=True)
    await store.delete(ipam.peer_key(SUBNET))
    me = make_peer("me")
    got, _ = await claim(store, me, mesh=MESH, prefix=PREFIX, pinned=True)
    assert got == me
