"""The Store: one NATS connection and one key-value bucket, every call with typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StreamConfig, StreamInfo
from nats.js.kv import KeyValue
from nats.protocol.parser import PERMISSIONS_ERR

from ikto.config import Config
from ikto.entry import MAX_VALUE_BYTES
from ikto.store import connection
from ikto.store.bucket import (
    BUCKET_HISTORY,
    BUCKET_MAX_CONSUMERS,
    BucketInfo,
    bucket_info,
    kv_stream_config,
    stream_name,
)
from ikto.store.connection import CONNECT_TIMEOUT, Callback
from ikto.store.errors import (
    KeyExistsError,
    PermissionDeniedError,
    RevisionMismatchError,
    StoreError,
    describe,
    translate,
)
from ikto.store.watch import Entry
from ikto.store.watch import watch as _watch

log = logging.getLogger("ikto.store")
T = TypeVar("T")

# Bucket limits used when open_bucket() creates the bucket (store/bucket.py):
# - history=5: the agent only ever reads the latest value, but a few old revisions let an
#   operator see what changed (`nats kv history`) while keeping the stream at most
#   5 x (number of keys) messages. Delete markers count as one revision.
# - max_value_size: entry.MAX_VALUE_BYTES.
# - max_consumers: BUCKET_MAX_CONSUMERS watches (one per agent).
# - replicas: 1 for a single server; 3 for a three-server cluster (survives losing one).
# - no max_age: an entry lives until its node deletes it (2.9's expiry would not even tell
#   watchers: docs/facts.md); no max_bytes: the number of keys already bounds the size, and
#   a full stream would refuse every node's writes (discard=new).
BUCKET_MAX_VALUE_SIZE = MAX_VALUE_BYTES
REQUEST_TIMEOUT = 5.0  # seconds for one JetStream API request
# Reads, watches and bucket calls go through JetStream API subjects ($JS.API.DIRECT.GET...):
# a permission violation on any of them fails the pending ones.
_JS_API = ("$js.api.",)
_STREAM_NOT_FOUND = 10059


# Seconds. nats-py's close() writes out what is pending and waits for the socket to drain it:
# towards a server behind a firewall that drops packets, until TCP gives up (minutes).
CLOSE_TIMEOUT = 5.0


class Store:
    """A NATS connection and one key-value bucket; create with Store.connect()."""

    def __init__(self, nc: Client, servers: list[str]) -> None:
        self._nc = nc
        self._servers = servers
        self._js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._kv: KeyValue | None = None
        self._bucket = ""
        # Permission violations arrive asynchronously (error callback), not as the reply to
        # the request that caused them; pending operations wait for them here.
        self._denial_waiters: dict[asyncio.Future[str], tuple[str, ...]] = {}
        self._last_denial: tuple[float, str] | None = None
        self._closing = False

    @classmethod
    async def connect(
        cls,
        config: Config,
        *,
        name: str | None = None,
        on_disconnect: Callback | None = None,
        on_reconnect: Callback | None = None,
        connect_wait: float = 10.0,
    ) -> Store:
        """Connect to config.nats_servers; StoreError if no server answers within one pass."""
        holder: list[Store] = []
        nc = await connection.connect(
            config,
            name=name or f"ikto {config.name}",
            on_error=lambda err: holder[0]._on_error(err) if holder else None,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            is_closing=lambda: bool(holder) and holder[0]._closing,
            connect_wait=connect_wait,
        )
        store = cls(nc, config.nats_servers)
        holder.append(store)
        return store

    def _on_error(self, err: Exception) -> None:
        text = str(err).lower()
        if PERMISSIONS_ERR in text:
            self._last_denial = (time.monotonic(), text)
            for fut, needles in list(self._denial_waiters.items()):
                if not fut.done() and any(n in text for n in needles):
                    fut.set_result(text)
            log.warning("NATS: %s", describe(err, CONNECT_TIMEOUT))
        else:
            log.debug("NATS: %s", describe(err, CONNECT_TIMEOUT))

    @property
    def connected(self) -> bool:
        """True while the connection to a server is up (False while reconnecting)."""
        return self._nc.is_connected

    @property
    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the server we are connected to; (0, 0) if unknown."""
        v = self._nc.connected_server_version
        return (v.major or 0, v.minor or 0)

    async def close(self) -> None:
        """Close the connection; pending watches end."""
        self._closing = True
        with contextlib.suppress(Exception):  # TimeoutError too: a stop must not wait on NATS
            await asyncio.wait_for(self._nc.close(), CLOSE_TIMEOUT)

    # Calls with error mapping

    async def _call(self, action: str, coro: Awaitable[T], needles: Iterable[str] = _JS_API) -> T:
        """Await one nats-py call; a permission violation matching `needles` fails it at once."""
        denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denial_waiters[denied] = tuple(n.lower() for n in needles)
        task = asyncio.ensure_future(coro)
        waiting: set[asyncio.Future[Any]] = {task, denied}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: do not leave the request running
            task.cancel()
            raise
        finally:
            del self._denial_waiters[denied]
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise PermissionDeniedError(f"NATS refused {action}: permission denied")
        try:
            return task.result()
        except (TimeoutError, nats.errors.Error, OSError) as e:
            recent = None
            if self._last_denial and time.monotonic() - self._last_denial[0] < 30:
                recent = self._last_denial[1]
            raise translate(
                action, e, bucket=self._bucket, timeout=REQUEST_TIMEOUT,
                connected=self.connected, recent_denial=recent,
            ) from None

    def _bucket_kv(self) -> KeyValue:
        if self._kv is None:
            raise StoreError("NATS: no bucket opened (call open_bucket first)")
        return self._kv

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    # The bucket

    async def open_bucket(self, bucket: str, *, create: bool, replicas: int = 1) -> None:
        """Use `bucket`; if it is missing, create it (see BUCKET_* limits) or refuse."""
        kv = await self._call(f"opening bucket {bucket}", self._lookup(bucket))
        if kv is None:
            if not create:
                raise StoreError(
                    f"NATS: bucket {bucket} does not exist; create it "
                    f"(nats kv add {bucket} --history {BUCKET_HISTORY} "
                    f"--max-value-size {BUCKET_MAX_VALUE_SIZE}) or set create_bucket: true"
                )
            config = kv_stream_config(
                bucket, replicas=replicas, max_value_size=BUCKET_MAX_VALUE_SIZE,
                max_consumers=BUCKET_MAX_CONSUMERS,
            )
            kv = await self._call(f"creating bucket {bucket}", self._create_bucket(bucket, config))
        self._kv = kv
        self._bucket = bucket

    async def _lookup(self, bucket: str) -> KeyValue | None:
        try:
            return await self._js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return None

    async def _create_bucket(self, bucket: str, config: StreamConfig) -> KeyValue:
        try:
            await self._js.add_stream(config)
        except nats.js.errors.APIError as e:
            # Another node created it first with other limits ("stream name already in
            # use with a different configuration", 10058): use theirs.
            if e.err_code != 10058:
                raise
            return await self._js.key_value(bucket)
        log.info(
            "NATS: created bucket %s (history %d, max value %d bytes, %d replica(s), up to %d watches)",
            bucket, BUCKET_HISTORY, BUCKET_MAX_VALUE_SIZE, config.num_replicas, config.max_consumers,
        )
        return await self._js.key_value(bucket)

    async def bucket_info(self) -> BucketInfo:
        """The bucket's limits and usage (`ikto bucket`)."""
        info = await self._stream_info()
        v = self._nc.connected_server_version
        return bucket_info(self._bucket, info, f"nats-server {v.major}.{v.minor}.{v.patch}")

    async def _stream_info(self) -> StreamInfo:
        info = self._js.stream_info(stream_name(self._bucket))
        return await self._call(f"reading bucket {self._bucket}", info)

    async def set_max_consumers(self, limit: int) -> BucketInfo:
        """Change how many watches the bucket allows (nats-server 2.12.5+; older ones refuse, 10052)."""
        config = (await self._stream_info()).config
        config.max_consumers = limit
        await self._call(f"changing bucket {self._bucket}", self._js.update_stream(config))
        return await self.bucket_info()

    async def delete_bucket(self, bucket: str) -> None:
        """Delete a bucket and everything in it (for operators and tests; agents never do)."""
        await self._call(f"deleting bucket {bucket}", self._js.delete_key_value(bucket))

    async def stream_info(self) -> tuple[str, int]:
        """(identity of the bucket's stream, its last sequence): a new identity means recreated."""
        kv = self._bucket_kv()
        status = await self._call(f"reading bucket {self._bucket}", kv.status())
        info = status.stream_info
        ident = info.created.isoformat() if info.created is not None else info.config.name or ""
        return ident, int(info.state.last_seq or 0)

    async def server_time(self) -> datetime | None:
        """The server's timestamp of the newest message in the bucket (None: empty bucket)."""
        _, last = await self.stream_info()
        return await self.stamp(last) if last else None

    # Keys

    async def get(self, key: str) -> Entry | None:
        """The key's latest value, or None if it is missing, deleted or purged."""
        kv = self._bucket_kv()
        return await self._call(f"reading {self._subject(key)}", _get_or_none(kv, key))

    async def create(self, key: str, value: bytes) -> int:
        """Store value under key if the key has no value (also after a delete); its revision."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        try:
            return await self._call(f"publish to {subject}", kv.create(key, value), (subject,))
        except RevisionMismatchError:
            raise KeyExistsError(f"NATS: {key} already exists in bucket {self._bucket}") from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Replace key's value if its latest revision is still `revision`; the new revision."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        return await self._call(f"publish to {subject}", kv.update(key, value, last=revision), (subject,))

    async def put(self, key: str, value: bytes) -> int:
        """Store value under key unconditionally; its revision."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        return await self._call(f"publish to {subject}", kv.put(key, value), (subject,))

    async def stamp(self, revision: int) -> datetime | None:
        """The server's timestamp of the message at `revision` (None if it is gone)."""
        kv = self._bucket_kv()
        try:
            get = self._js.get_msg(kv._stream, seq=revision, direct=kv._direct)
            msg = await self._call(f"reading bucket {self._bucket}", get)
        except StoreError:
            return None
        return msg.time

    @property
    def client_ip(self) -> str | None:
        """Our address as the NATS server sees it (behind a NAT: the NAT's public address)."""
        return self._nc.client_ip

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Put a delete marker on key; with `revision`, only if that is still its latest."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        if revision is not None and revision <= 0:
            raise ValueError(f"revision must be positive (got {revision})")
        await self._call(f"publish to {subject}", kv.delete(key, last=revision), (subject,))

    async def latest(self, pattern: str) -> list[Entry]:
        """Every key matching pattern with its latest value (a watch read to its snapshot and
        closed: one consumer for a moment, whatever the number of keys)."""
        out: list[Entry] = []
        async with contextlib.aclosing(self.watch(pattern)) as entries:
            async for e in entries:
                if e is None:
                    break
                if e.operation == "PUT":
                    out.append(e)
        return out

    def watch(self, pattern: str = "peers.*") -> AsyncGenerator[Entry | None, None]:
        """See ikto.store.watch.watch: a complete snapshot, None, then every change."""
        return _watch(self._bucket_kv(), self._call, f"watching {self._subject(pattern)}", pattern)


async def _get_or_none(kv: KeyValue, key: str) -> Entry | None:
    """The key's latest entry with its server timestamp (kv.get() drops the timestamp)."""
    subject = f"{kv._pre}{key}"
    try:
        msg = await kv._js.get_msg(kv._stream, subject=subject, direct=kv._direct)
    except nats.js.errors.NotFoundError as e:
        if e.err_code == _STREAM_NOT_FOUND:
            raise  # the bucket itself is gone
        return None
    if msg.subject != subject:
        return None
    headers: dict[str, Any] = msg.headers or {}
    if headers.get("KV-Operation") in ("DEL", "PURGE") or headers.get("Nats-Marker-Reason"):
        return None
    return Entry(key=key, value=msg.data or b"", revision=msg.seq or 0, operation="PUT", created=msg.time)
