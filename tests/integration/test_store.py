"""Store against a real nats-server (each test runs on 2.15 and 2.9)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from natsserver import NatsServer, free_port

from ikto.config import Config
from ikto.store import (
    BUCKET_HISTORY,
    BUCKET_MAX_VALUE_SIZE,
    Entry,
    KeyExistsError,
    RevisionMismatchError,
    Store,
    StoreError,
)

pytestmark = pytest.mark.integration

OpenStore = Callable[..., Awaitable[Store]]


async def _next(it: AsyncIterator[Entry | None], timeout: float = 5.0) -> Entry | None:
    return await asyncio.wait_for(anext(it), timeout)


async def test_open_bucket_creates_it(open_store: OpenStore) -> None:
    store = await open_store(create=True)
    ident, last = await store.stream_info()
    assert ident and last == 0
    # A second node opens the same bucket without recreating it.
    other = await open_store(create=False)
    assert await other.stream_info() == (ident, 0)


async def test_open_bucket_refuses_to_create_when_told_not_to(open_store: OpenStore) -> None:
    with pytest.raises(StoreError, match=r"bucket ikto-test does not exist.*create_bucket: true"):
        await open_store(create=False)


async def test_bucket_limits(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.put("peers.big", b"x" * BUCKET_MAX_VALUE_SIZE)
    with pytest.raises(StoreError, match="message size exceeds maximum"):
        await store.put("peers.big", b"x" * (BUCKET_MAX_VALUE_SIZE + 1))
    for i in range(BUCKET_HISTORY + 3):
        await store.put("peers.a", b"%d" % i)
    _, last = await store.stream_info()
    entry = await store.get("peers.a")
    assert entry is not None and entry.revision == last and entry.value == b"7"


async def test_create_get_and_key_exists(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.get("peers.a") is None
    rev = await store.create("peers.a", b"one")
    got = await store.get("peers.a")
    assert got is not None and got.created is not None  # the server's timestamp
    assert got == Entry("peers.a", b"one", rev, "PUT", got.created)
    with pytest.raises(KeyExistsError, match=r"peers\.a already exists"):
        await store.create("peers.a", b"two")
    # A deleted key can be created again (nats-py retries with the delete marker's revision).
    await store.delete("peers.a")
    assert await store.get("peers.a") is None
    rev2 = await store.create("peers.a", b"three")
    assert rev2 > rev


async def test_update_is_compare_and_set(open_store: OpenStore) -> None:
    store = await open_store()
    rev = await store.create("peers.a", b"one")
    rev2 = await store.update("peers.a", b"two", rev)
    assert rev2 > rev
    with pytest.raises(RevisionMismatchError):
        await store.update("peers.a", b"stale", rev)
    got = await store.get("peers.a")
    assert got is not None and (got.value, got.revision) == (b"two", rev2)
    # put ignores revisions.
    assert await store.put("peers.a", b"three") > rev2


async def test_delete_with_stale_revision(open_store: OpenStore) -> None:
    store = await open_store()
    rev = await store.create("peers.a", b"one")
    await store.update("peers.a", b"two", rev)
    with pytest.raises(RevisionMismatchError):
        await store.delete("peers.a", revision=rev)
    assert await store.get("peers.a") is not None
    latest = await store.get("peers.a")
    assert latest is not None
    await store.delete("peers.a", revision=latest.revision)
    assert await store.get("peers.a") is None


async def test_watch_empty_bucket_sends_marker(open_store: OpenStore) -> None:
    store = await open_store()
    watch = store.watch()
    assert await _next(watch) is None
    rev = await store.put("peers.a", b"1")
    e = await _next(watch)
    assert e is not None and (e.key, e.value, e.revision, e.operation) == ("peers.a", b"1", rev, "PUT")
    assert e.created is not None
    await watch.aclose()


async def test_watch_snapshot_then_changes_in_order(open_store: OpenStore) -> None:
    store = await open_store()
    await store.put("peers.a", b"a1")
    await store.put("peers.b", b"b1")
    await store.put("peers.a", b"a2")  # only the latest value is in the snapshot
    await store.put("peers.c", b"c1")
    await store.delete("peers.c")  # a deleted key shows up as its delete marker
    await store.put("other.x", b"not matched by peers.*")

    watch = store.watch("peers.*")
    snapshot = []
    while (e := await _next(watch)) is not None:
        snapshot.append(e)
    assert [(e.key, e.value, e.operation) for e in snapshot] == [
        ("peers.b", b"b1", "PUT"),
        ("peers.a", b"a2", "PUT"),
        ("peers.c", None, "DEL"),
    ]

    r1 = await store.put("peers.d", b"d1")
    r2 = await store.update("peers.d", b"d2", r1)
    await store.delete("peers.a")
    await store.put("other.y", b"ignored")
    await store.create("peers.e", b"e1")
    got = [await _next(watch) for _ in range(4)]
    assert [(e.key, e.value, e.operation) for e in got if e] == [
        ("peers.d", b"d1", "PUT"),
        ("peers.d", b"d2", "PUT"),
        ("peers.a", None, "DEL"),
        ("peers.e", b"e1", "PUT"),
    ]
    assert got[1] is not None and got[1].revision == r2
    await watch.aclose()


async def test_watch_sees_purge(open_store: OpenStore) -> None:
    store = await open_store()
    await store.put("peers.a", b"1")
    watch = store.watch()
    assert (await _next(watch)) is not None
    assert await _next(watch) is None
    other = await open_store()  # the change comes from another connection
    kv = other._bucket_kv()
    await kv.purge("peers.a")
    e = await _next(watch)
    assert e is not None and (e.key, e.value, e.operation) == ("peers.a", None, "PURGE")
    await watch.aclose()


async def _snapshot(watch: AsyncIterator[Entry | None]) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    while (e := await _next(watch, timeout=30)) is not None:
        out[e.key] = e
    return out


async def test_watch_ignores_nats_py_early_marker(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py can queue its 'snapshot done' None ahead of messages already on the wire
    (nats.py#842): a full bucket then looks empty. Force that order; ours must still
    hold every entry."""
    store = await open_store()
    kv = store._bucket_kv()
    await asyncio.gather(*(kv.put(f"peers.k{i}", b"v") for i in range(200)))
    real = KeyValue.watch

    async def racy(self: KeyValue, *a: object, **kw: object) -> KeyValue.KeyWatcher:
        watcher = await real(self, *a, **kw)
        watcher._updates._queue.appendleft(None)  # type: ignore[attr-defined]
        return watcher

    monkeypatch.setattr(KeyValue, "watch", racy)
    watch = store.watch()
    snap = await _snapshot(watch)
    await watch.aclose()
    assert len(snap) == 200


async def test_watch_snapshot_complete_under_concurrent_writes(open_store: OpenStore) -> None:
    """Every entry present when the watch starts is in its snapshot, however fast others write."""
    store = await open_store()
    writer_store = await open_store()
    kv, wkv = store._bucket_kv(), writer_store._bucket_kv()
    await asyncio.gather(*(kv.put(f"peers.k{i}", b"v") for i in range(500)))
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(wkv.put(f"peers.w{(n + i) % 300}", b"w") for i in range(50)))
            n += 50

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.05)
        for _ in range(5):
            watch = store.watch()
            snap = await _snapshot(watch)
            await watch.aclose()
            assert {f"peers.k{i}" for i in range(500)} <= snap.keys()
    finally:
        stop.set()
        await task


async def test_watch_snapshot_completes_if_server_overcounts(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that claims one message more than it sends (seen with deliver-last-per-
    subject) must not hang the snapshot: it completes after a quiet second."""
    store = await open_store()
    await store.put("peers.a", b"1")
    await store.put("peers.b", b"2")
    Sub = JetStreamContext.PushSubscription
    real = Sub.consumer_info

    async def overcount(self: JetStreamContext.PushSubscription) -> ConsumerInfo:
        info = await real(self)
        info.num_pending = (info.num_pending or 0) + 1
        return info

    monkeypatch.setattr(Sub, "consumer_info", overcount)
    watch = store.watch()
    snap = await _snapshot(watch)
    assert snap.keys() == {"peers.a", "peers.b"}
    rev = await store.put("peers.c", b"3")  # and changes still flow after it
    e = await _next(watch)
    assert e is not None and (e.key, e.revision) == ("peers.c", rev)
    await watch.aclose()


async def test_watch_large_snapshot(open_store: OpenStore) -> None:
    store = await open_store()
    n = 10_000
    kv = store._bucket_kv()
    # Fill the bucket fast: publish without awaiting each acknowledgement in turn.
    for start in range(0, n, 1000):
        await asyncio.gather(*(kv.put(f"peers.k{i}", b"v") for i in range(start, start + 1000)))
    t0 = time.perf_counter()
    count = 0
    watch = store.watch()
    while await _next(watch, timeout=30) is not None:
        count += 1
    elapsed = time.perf_counter() - t0
    await watch.aclose()
    print(f"snapshot of {n} keys complete in {elapsed * 1000:.0f} ms")  # speed: bench/, not here
    assert count == n


async def test_stream_info_changes_when_bucket_recreated(open_store: OpenStore) -> None:
    store = await open_store()
    ident, _ = await store.stream_info()
    await store.put("peers.a", b"1")
    assert (await store.stream_info())[1] >= 1
    await store._js.delete_key_value("ikto-test")
    await asyncio.sleep(0.01)  # the creation timestamp has sub-ms resolution; be safe
    await store.open_bucket("ikto-test", create=True)
    ident2, last = await store.stream_info()
    assert ident2 != ident and last == 0


async def test_connect_to_closed_port_fails_fast(make_config: Callable[..., Config]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        await Store.connect(make_config(url))
    assert time.monotonic() - t0 < 2.0
    msg = str(err.value)
    assert msg.startswith(f"NATS: cannot connect to {url}: ")
    assert "refused" in msg.lower() and "(is nats-server running?)" in msg
    assert "\n" not in msg


async def test_connect_names_every_url(make_config: Callable[..., Config]) -> None:
    urls = [f"nats://127.0.0.1:{free_port()}" for _ in range(2)]
    with pytest.raises(StoreError, match="cannot connect to " + ", ".join(urls)):
        await Store.connect(make_config(",".join(urls)))


async def test_reconnects_after_server_restart(
    nats_server: NatsServer, open_store: OpenStore, make_config: Callable[..., Config]
) -> None:
    events: list[str] = []

    async def down() -> None:
        events.append("down")

    async def up() -> None:
        events.append("up")

    writer = await open_store()  # creates the bucket
    await writer.put("peers.a", b"1")
    store = await Store.connect(make_config(nats_server.url), on_disconnect=down, on_reconnect=up)
    try:
        await store.open_bucket("ikto-test", create=False)
        nats_server.restart()
        deadline = time.monotonic() + 15
        while not (store.connected and "up" in events):
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)
        assert events[:2] == ["down", "up"]
        got = await store.get("peers.a")
        assert got is not None and got.value == b"1"
    finally:
        await store.close()


NODE_PERMISSIONS = """
authorization {
  users = [
    {user: admin, password: admin}
    {user: node, password: node, permissions: {
      publish: {allow: ["$KV.ikto-test.peers.mine", "$JS.API.INFO", "$JS.API.STREAM.INFO.KV_ikto-test",
                        "$JS.API.DIRECT.GET.KV_ikto-test.>", "$JS.API.STREAM.MSG.GET.KV_ikto-test",
                        "$JS.API.CONSUMER.CREATE.KV_ikto-test", "$JS.API.CONSUMER.CREATE.KV_ikto-test.>",
                        "$JS.API.CONSUMER.INFO.KV_ikto-test.>", "$JS.API.CONSUMER.DELETE.KV_ikto-test.>"]}
      subscribe: {allow: ["_INBOX.>"]}
    }}
  ]
}
"""


async def test_permission_denied_is_said_clearly(
    nats_server_factory: Callable[..., NatsServer],
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text(NODE_PERMISSIONS)
    server = nats_server_factory(extra_args=["-c", str(conf)])
    admin = await Store.connect(make_config(server.url.replace("//", "//admin:admin@")))
    node = await Store.connect(make_config(server.url.replace("//", "//node:node@")))
    try:
        await admin.open_bucket("ikto-test", create=True)
        await admin.put("peers.other", b"theirs")
        await node.open_bucket("ikto-test", create=False)
        assert await node.put("peers.mine", b"mine") > 0
        watch = node.watch()
        assert {e.key for e in [await _next(watch), await _next(watch)] if e} == {
            "peers.mine",
            "peers.other",
        }
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            await node.put("peers.other", b"hijack")
        assert time.monotonic() - t0 < 2.0  # not the 5 s request timeout
        assert str(err.value) == ("NATS refused publish to $KV.ikto-test.peers.other: permission denied")
        got = await admin.get("peers.other")
        assert got is not None and got.value == b"theirs"
        await watch.aclose()
    finally:
        await node.close()
        await admin.close()
