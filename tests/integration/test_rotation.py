"""Key rotation against a real nats-server (2.15 and 2.9) with the OS seam faked: the switch
itself, a failure half-way, and a node coming back consistent after a crash at each step."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_network
from pathlib import Path

import pytest
from fakes import FakeWg, until
from test_agent import entry

from ikto import ipam, keys, rotation
from ikto.agent import Agent
from ikto.store import StoreError


async def run_agent(cfg, path: Path, wg: FakeWg) -> tuple[Agent, asyncio.Task[int]]:
    a = Agent(cfg, path, wg=wg)
    task = asyncio.create_task(a.run())
    return a, task


def consistent(agent: Agent, wg: FakeWg, held: dict, cfg) -> None:
    """Key file, interface and our entry agree; no rotation is left half-done."""
    disk = keys.public_key(keys.read_private_key(cfg.private_key_path))
    assert wg.key == disk == held["public_key"] == agent.public_key
    assert not rotation.pending(cfg.private_key_path).exists()


async def test_rotate_key_then_restart(start_agent, open_store):
    store = await open_store()
    peer = entry("fd10:d0::/48", name="peer")
    await store.put(ipam.peer_key(ip_network("fd10:d0::/48")), json.dumps(peer).encode())
    agent, wg = await start_agent("fd10:d1::")
    old = agent.public_key
    new = await agent.rotate_key()
    assert new != old and agent.restart
    key = ipam.peer_key(agent.self_peer.allowed_ip)
    held = json.loads((await store.get(key)).value)
    assert held["public_key"] == new and wg.key == new
    assert keys.public_key(keys.read_private_key(agent.config.private_key_path)) == new
    assert oct(agent.config.private_key_path.stat().st_mode & 0o777) == "0o600"
    # The peer had not handshaken with the new key (a fake one never does): re-added, which
    # starts a handshake at once instead of waiting out a handshake collision.
    pk = peer["public_key"]
    assert any(pk in p.remove and pk in {c.public_key for c in p.set} for p in wg.applies())
    # what `ikto agent` does next: run again (here, in this process) with the new key
    a2, task = await run_agent(agent.config, agent.config_path, wg)
    try:
        await until(a2.ready.is_set)
        assert a2.public_key == new and a2.self_peer.allowed_ip == agent.self_peer.allowed_ip
        consistent(a2, wg, json.loads((await store.get(key)).value), a2.config)
        assert peer["public_key"] in wg.peers
    finally:
        a2.stop()
        await task


async def test_a_failed_rotation_leaves_the_old_key_everywhere(start_agent, monkeypatch):
    agent, wg = await start_agent("fd10:d2::")
    old = agent.public_key

    async def refuse(public: str) -> None:
        raise StoreError("NATS: publish to …: timed out")

    monkeypatch.setattr(agent.rotator, "_rekey", refuse)
    with pytest.raises(StoreError):
        await agent.rotate_key()
    assert wg.key == old and not agent.restart and not agent._stop.is_set()
    assert not rotation.pending(agent.config.private_key_path).exists()


@pytest.mark.parametrize("crashed_after", ["new key written", "interface switched", "entry updated",
                                           "key committed"])
async def test_a_crash_at_any_step_comes_back_consistent(start_agent, open_store, crashed_after):
    """Leave the node exactly as a crash after each step would, then start the agent again."""
    agent, wg = await start_agent("fd10:d3::")
    cfg, path, store = agent.config, agent.config_path, await open_store()
    address = agent.self_peer.allowed_ip
    agent.stop()
    await until(lambda: agent.store is not None and agent.store._nc.is_closed, 10)  # really gone
    key_path = cfg.private_key_path
    steps = ["new key written", "interface switched", "entry updated", "key committed"]
    done = steps[: steps.index(crashed_after) + 1]
    private = rotation.write_new(key_path)
    public = keys.public_key(private)
    if "interface switched" in done:
        wg.configure(51820, rotation.pending(key_path))
    if "entry updated" in done:
        k = ipam.peer_key(address)
        cur = await store.get(k)
        value = json.loads(cur.value)
        await store.update(k, json.dumps({**value, "public_key": public}).encode(), cur.revision)
    if "key committed" in done:
        rotation.commit(key_path)
    finished = "entry updated" in done
    for _ in range(2):  # a restart that finishes the rotation asks for one more (with the new key)
        a2, task = await run_agent(cfg, path, wg)
        await asyncio.wait([task, asyncio.create_task(a2.ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not a2.restart:
            break
        await task
    try:
        await until(a2.ready.is_set)
        held = json.loads((await store.get(ipam.peer_key(a2.self_peer.allowed_ip))).value)
        consistent(a2, wg, held, cfg)
        assert (a2.public_key == public) is finished, "a published rotation must be finished, else undone"
        assert a2.self_peer.allowed_ip == address  # never mistaken for a stranger
    finally:
        a2.stop()
        await task
