"""The agent against a real nats-server (2.15 and 2.9) with the OS seam faked."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_network

import pytest
from fakes import until

from ikto import ipam, keys, views
from ikto.agent import Agent
from ikto.api import call
from ikto.store import StoreError


def entry(net: str, name: str = "peer", adv: str = "198.18.0.50", port: int = 51820, pub: str | None = None):
    return {
        "name": name,
        "public_key": pub or keys.public_key(keys.generate_private_key()),
        "advertise_address": adv,
        "allowed_ip": net,
        "wg_port": port,
    }


@pytest.fixture
def running(start_agent):
    """Agents with default timings and the admin API served."""
    return lambda addr="fd10:aa::", **fields: start_agent(addr, serve_api=True, **fields)


async def test_claims_and_follows_add_update_delete(running, open_store):
    agent, wg = await running()
    store = await open_store()
    me = await store.get(ipam.peer_key(agent.self_peer.allowed_ip))
    assert me is not None and json.loads(me.value)["public_key"] == agent.public_key

    e = entry("fd10:1:2::/48", name="n2")
    key = ipam.peer_key(ip_network("fd10:1:2::/48"))
    await store.put(key, json.dumps(e).encode())
    await until(lambda: e["public_key"] in wg.peers)
    assert wg.peers[e["public_key"]].allowed_ips == ("fd10:1:2::/48",)

    e2 = {**e, "advertise_address": "198.18.0.77"}
    await store.put(key, json.dumps(e2).encode())
    await until(lambda: wg.peers[e["public_key"]].endpoint == "198.18.0.77:51820")

    await store.delete(key)
    await until(lambda: e["public_key"] not in wg.peers)
    # every apply was a small, targeted plan: never the whole mesh
    assert all(len(p) == 1 for p in wg.applies())


async def test_snapshot_applied_in_one_call_and_bad_entries_skipped(running, open_store):
    store = await open_store()
    good = [entry(f"fd10:{i:x}::/48", name=f"n{i}") for i in range(1, 30)]
    for e in good:
        await store.put(ipam.peer_key(ip_network(e["allowed_ip"])), json.dumps(e).encode())
    bad_key = ipam.peer_key(ip_network("fd10:999::/48"))
    await store.put(bad_key, b"{oops")
    await store.put(ipam.peer_key(ip_network("fd10:998::/48")), json.dumps(entry("fd10:997::/48")).encode())
    agent, wg = await running()
    await until(lambda: len(wg.peers) == len(good))
    assert len(wg.applies()) == 1
    assert {r["key"] for r in views.rejected(agent)} >= {bad_key}
    # the agent keeps going after bad input: a later good entry still arrives
    late = entry("fd10:500::/48")
    await store.put(ipam.peer_key(ip_network("fd10:500::/48")), json.dumps(late).encode())
    await until(lambda: late["public_key"] in wg.peers)


async def test_v03_entry_accepted_and_ours_readable_by_v03(running, open_store):
    store = await open_store()
    v03 = entry("fd10:3:3::/48", name="")  # v0.3 init wrote an empty name by default
    await store.put(ipam.peer_key(ip_network("fd10:3:3::/48")), json.dumps(v03).encode())
    agent, wg = await running()
    await until(lambda: v03["public_key"] in wg.peers)
    mine = json.loads((await store.get(ipam.peer_key(agent.self_peer.allowed_ip))).value)
    assert set(mine) >= {"name", "public_key", "advertise_address", "allowed_ip", "wg_port"}


async def test_restart_same_key_keeps_address_and_no_churn(running, open_store, make_config, nats_server):
    agent, wg = await running("fd10:bb::")
    rev = agent.membership.revision
    other = entry("fd10:cc::/48")
    store = await open_store()
    await store.put(ipam.peer_key(ip_network("fd10:cc::/48")), json.dumps(other).encode())
    await until(lambda: other["public_key"] in wg.peers)
    agent.stop()
    # a restart with the same config/key against an interface that already holds the peers
    a2 = Agent(agent.config, agent.config_path, wg=wg)
    n_calls = len(wg.calls)
    t = asyncio.create_task(a2.run())
    await until(lambda: a2.follower.snapshot_done)
    await asyncio.sleep(0.3)
    assert a2.self_peer.allowed_ip == agent.self_peer.allowed_ip and a2.membership.revision > rev
    assert [c for c in wg.calls[n_calls:] if c[0] in ("apply", "up", "down", "delete")] == []
    a2.stop()
    await t


async def test_taken_address_moves_and_is_persisted(running, open_store):
    store = await open_store()
    taken = entry("fd10:dd::/48", name="holder")
    await store.put(ipam.peer_key(ip_network("fd10:dd::/48")), json.dumps(taken).encode())
    agent, wg = await running("fd10:dd::")
    assert agent.self_peer.allowed_ip != ip_network("fd10:dd::/48")
    saved = json.loads(agent.config_path.read_text())
    assert saved["private_address"] == str(agent.self_peer.allowed_ip.network_address)
    assert taken["public_key"] in wg.peers  # the holder is our peer, not evicted


async def test_admin_api_and_leave(running, open_store):
    agent, _ = await running("fd10:ee::")
    sock = agent.config.admin_socket
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    node = await asyncio.to_thread(call, sock, "GET", "/v1/node")
    assert node["allowed_ip"] == "fd10:ee::/48" and "private" not in json.dumps(node).lower()
    st = await asyncio.to_thread(call, sock, "GET", "/v1/status")
    assert st["health"]["ok"] and st["peers"] == []
    await asyncio.to_thread(call, sock, "POST", "/v1/leave")
    store = await open_store()
    await until(lambda: agent._stop.is_set())
    assert await store.get(ipam.peer_key(ip_network("fd10:ee::/48"))) is None


async def test_leave_after_our_revision_moved_still_removes_our_entry(running, open_store):
    """A heartbeat landing just before `leave` moves our revision: leave must re-read and
    delete (the soak found `ikto leave` failing with a revision mismatch)."""
    agent, _ = await running("fd10:e1::")
    key = ipam.peer_key(ip_network("fd10:e1::/48"))
    store = await open_store()
    cur = await store.get(key)
    assert cur is not None
    stale = agent.membership.revision
    await store.update(key, cur.value, cur.revision)  # what a heartbeat does
    agent.membership.revision = stale
    await agent.leave(False)
    assert await store.get(key) is None
    assert agent._stop.is_set()


async def test_a_failed_leave_leaves_the_node_running(running, monkeypatch):
    agent, _ = await running("fd10:e3::")

    async def refuse(*a, **kw):
        raise StoreError("NATS: publish to …: permissions violation")

    monkeypatch.setattr(agent.store, "delete", refuse)
    with pytest.raises(StoreError):
        await agent.leave(False)
    assert not agent.membership.leaving and not agent._stop.is_set()  # heartbeats go on


async def test_leave_never_deletes_another_nodes_entry(running, open_store):
    agent, _ = await running("fd10:e2::")
    key = ipam.peer_key(ip_network("fd10:e2::/48"))
    store = await open_store()
    cur = await store.get(key)
    assert cur is not None
    other = json.dumps(entry("fd10:e2::/48", name="newcomer")).encode()
    await store.update(key, other, cur.revision)  # our address was reclaimed meanwhile
    await agent.leave(False)
    now = await store.get(key)
    assert now is not None and now.value == other


async def test_rendered_file_follows_the_mesh_and_is_flushed_on_stop(running, open_store, monkeypatch):
    import ikto.filewriter

    monkeypatch.setattr(ikto.filewriter, "WRITE_QUIET", 0.2)
    agent, wg = await running("fd10:ef::")
    path = agent.config.wg_config_path
    store = await open_store()
    e = entry("fd10:ef:1::/48", name="filed")
    await store.put(ipam.peer_key(ip_network("fd10:ef:1::/48")), json.dumps(e).encode())
    await until(lambda: path.exists() and e["public_key"] in path.read_text(), 5)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a change just before stopping is still written: a reboot restores the latest mesh
    monkeypatch.setattr(ikto.filewriter, "WRITE_QUIET", 60)
    late = entry("fd10:ef:2::/48", name="late")
    await store.put(ipam.peer_key(ip_network("fd10:ef:2::/48")), json.dumps(late).encode())
    await until(lambda: late["public_key"] in wg.peers)
    assert late["public_key"] not in path.read_text()
    agent.stop()
    await until(lambda: late["public_key"] in path.read_text(), 5)


async def test_leave_without_a_running_agent(running, open_store, tmp_path):
    import subprocess
    import sys

    agent, _ = await running("fd10:ed::")
    cfg_path = agent.config_path
    agent.stop()
    await until(lambda: not agent.config.admin_socket.exists(), 5)
    store = await open_store()
    key = ipam.peer_key(ip_network("fd10:ed::/48"))
    assert await store.get(key) is not None
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ikto", "leave", "-c", str(cfg_path), "-s", str(tmp_path / "none.sock")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert await store.get(key) is None
