"""Room for the fleet: the watch limit of buckets we create, `ikto bucket`, and an agent whose
watch is refused, against real nats-servers (2.15 and 2.9)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from fakes import FakeWg, until
from nats.js.api import KeyValueConfig

from ikto import views
from ikto.agent import Agent
from ikto.store import BUCKET_MAX_CONSUMERS
from ikto.store.bucket import kv_stream_config
from ikto_lab.nats import binary_version

BUCKET = "ikto-test"


def ikto(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikto", *args], capture_output=True, text=True, timeout=60)


async def test_a_bucket_we_create_allows_the_fleet_and_direct_gets(open_store, nats_server):
    store = await open_store()
    info = await store.bucket_info()
    assert info.max_consumers == BUCKET_MAX_CONSUMERS and info.direct_gets and info.history == 5
    await store.put("peers.x", b"1")  # nats-py uses it as a KV bucket like any other
    assert (await store.get("peers.x")).value == b"1"
    r = ikto("bucket", "--nats-url", nats_server.url, "--nats-kv", BUCKET, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_consumers"] == BUCKET_MAX_CONSUMERS
    r = ikto("bucket", "--nats-url", nats_server.url, "--nats-kv", BUCKET)
    assert r.returncode == 0 and f"of {BUCKET_MAX_CONSUMERS:,}" in r.stdout, r.stdout


async def test_raising_the_limit_of_a_bucket_made_elsewhere(open_store, nats_server):
    store = await open_store()
    await store.delete_bucket(BUCKET)
    await store._js.create_key_value(KeyValueConfig(bucket=BUCKET, history=5))  # as `nats kv add` does
    r = ikto("bucket", "--nats-url", nats_server.url, "--nats-kv", BUCKET, "--max-consumers", "5000")
    assert "Traceback" not in r.stderr
    if binary_version(nats_server.binary).startswith("2.9."):
        assert r.returncode == 1 and r.stderr.startswith("ikto: ") and "cannot change" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert "of 5,000" in r.stdout
    r = ikto("bucket", "--nats-url", nats_server.url, "--nats-kv", BUCKET, "--max-consumers", "0")
    assert r.returncode == 2 and "--max-consumers" in r.stderr


async def test_a_refused_watch_is_reported_then_the_agent_joins_when_there_is_room(
    open_store, make_config, nats_server
):
    admin = await open_store()
    await admin.delete_bucket(BUCKET)  # a bucket that allows one watch, already taken
    await admin._js.add_stream(kv_stream_config(BUCKET, replicas=1, max_value_size=4096, max_consumers=1))
    await admin.open_bucket(BUCKET, create=False)
    hog = admin.watch("peers.*")
    assert await anext(hog) is None
    cfg = make_config(nats_server.url, private_address="fd10:b1::")
    cfg_path = Path(cfg.config_dir) / "ikto.json"
    cfg_path.write_text(json.dumps(cfg.to_json_dict()))
    agent = Agent(cfg, cfg_path, wg=FakeWg())
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.follower.watch_error is not None, 15)
        health = views.health(agent)
        assert not health["ok"] and "--max-consumers" in health["watch_error"], health
        assert not agent.ready.is_set()  # it does not join a mesh it cannot follow
        await hog.aclose()  # that watch ends: its consumer is deleted, which makes room
        await until(agent.ready.is_set, 90)
        assert agent.follower.watch_error is None and views.health(agent)["ok"]
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)
