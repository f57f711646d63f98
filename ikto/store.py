"""The mesh's only control plane: a NATS JetStream key-value bucket (the only module that imports nats).

Every nats-py exception is turned into a StoreError (or one of its two subclasses) with a
one-line message a person can act on. Everything else in ikto sees only Entry values.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from ikto.config import Config
from ikto.errors import IktoError

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]
Operation = Literal["PUT", "DEL", "PURGE"]
T = TypeVar("T")

# Bucket limits used when open_bucket() creates the bucket:
# - history=5: the agent only ever reads the latest value, but a few old revisions let an
#   operator see what changed (`nats kv history`) while keeping the stream at most
#   5 x (number of nodes) messages. Delete markers count as one revision.
# - max_value_size=4096: a v0.3 peer entry is ~200 bytes of JSON; 4 KiB leaves room for new
#   fields while a buggy or hostile writer cannot store megabytes under one key.
# - replicas: 1 for a single server; 3 for a three-server cluster (survives losing one).
# - no max_age: an entry lives until its node deletes it (2.9 expiry would not even tell
#   watchers, see FACTS.md); no max_bytes: the number of keys already bounds the size, and
#   a full stream would refuse every node's writes (nats-py creates KV streams with
#   discard=new).
BUCKET_HISTORY = 5
BUCKET_MAX_VALUE_SIZE = 4096
# 2.11+: how long the server keeps the delete marker of a key whose TTL expired.
MARKER_TTL = 3600.0

# Connection tuning (nats-py's defaults give up reconnecting after ~2 minutes and notice a
# dead link only after minutes: FACTS.md).
PING_INTERVAL = 5  # seconds; a silent link is declared dead after 3 missed PONGs: ~15-20 s
MAX_OUTSTANDING_PINGS = 3
RECONNECT_WAIT = 1  # seconds between attempts on one server (nats-py has no jitter option)
CONNECT_TIMEOUT = 2  # seconds for one TCP/TLS connect + handshake
REQUEST_TIMEOUT = 5.0  # seconds for one JetStream API request

# JetStream error codes meaning "the expected last subject sequence did not match".
# https://github.com/nats-io/nats-server/blob/main/server/errors.json (10071, 10164)
_WRONG_LAST_SEQUENCE = (10071, 10164)
# Reads, watches and bucket calls go through JetStream API subjects ($JS.API.DIRECT.GET...):
# a permission violation on any of them fails the pending ones.
_JS_API = ("$js.api.",)
SNAPSHOT_QUIET = 1.0  # s: see Store.watch


class StoreError(IktoError):
    """The bucket or the NATS connection failed; the message says what and how to fix it."""


class KeyExistsError(StoreError):
    """create() found the key already there."""


class RevisionMismatchError(StoreError):
    """update() or delete(revision=) was given a revision that is no longer the key's latest."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's value or delete/purge marker, as the bucket holds it."""

    key: str
    value: bytes | None  # None for DEL and PURGE
    revision: int
    operation: Operation
    created: datetime | None  # the server's timestamp of this revision


def _entry(e: KeyValue.Entry) -> Entry:
    op: Operation = "PUT" if e.operation is None else e.operation  # type: ignore[assignment]
    return Entry(
        key=e.key,
        value=e.value if op == "PUT" else None,
        revision=e.revision or 0,
        operation=op,
        created=e.created if isinstance(e.created, datetime) else None,
    )


def _describe(err: BaseException) -> str:
    """A short text for a nats-py exception (their str() is often empty or a repr)."""
    if isinstance(err, nats.js.errors.APIError):
        # Subclasses built by nats-py itself (KeyWrongLastSequenceError) lack err_code.
        desc = getattr(err, "description", None) or type(err).__name__
        code = getattr(err, "err_code", None)
        return f"{desc} (error {code})" if code else desc
    if isinstance(err, TimeoutError):  # also asyncio's; a connect attempt that hung
        return f"no answer within {CONNECT_TIMEOUT} s"
    if isinstance(err, OSError):
        # asyncio's strerror is "Connect call failed (...)"; the errno says why.
        return os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
    text = str(err).removeprefix("nats: ").strip("'")
    return text or type(err).__name__


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
        self.ttl_supported = False

    # Connecting

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
        """Connect to config.nats_servers; StoreError if no server answers within one pass.

        Once connected, the client reconnects forever. The first connection is given one
        attempt per server (and at most connect_wait seconds) so a wrong URL fails fast.
        """
        servers = config.nats_servers
        nc = Client()
        store = cls(nc, servers)
        failed: list[str] = []
        all_failed = asyncio.Event()
        connecting = True

        async def error_cb(err: Exception) -> None:
            if connecting:
                failed.append(_describe(err))
                if len(failed) >= len(servers):
                    all_failed.set()
                return
            store._on_error(err)

        async def disconnected_cb() -> None:
            if connecting or store._closing:
                return
            log.warning("NATS: disconnected from %s; reconnecting", store._server_name())
            if on_disconnect is not None:
                await on_disconnect()

        async def reconnected_cb() -> None:
            log.info("NATS: reconnected to %s", store._server_name())
            if on_reconnect is not None:
                await on_reconnect()

        options: dict[str, Any] = {
            "servers": servers,
            "name": name or f"ikto {config.name}",
            "error_cb": error_cb,
            "disconnected_cb": disconnected_cb,
            "reconnected_cb": reconnected_cb,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT,
            "connect_timeout": CONNECT_TIMEOUT,
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        }
        if config.nats_creds is not None:
            options["user_credentials"] = str(_readable(config.nats_creds, "nats_creds"))
            if importlib.util.find_spec("nkeys") is None:  # nats-py signs the nonce with it
                raise StoreError("NATS: nats_creds needs the nkeys package (pip install 'nats-py[nkeys]')")
        tls = _tls_context(config)
        if tls is not None:
            options["tls"] = tls

        task = asyncio.ensure_future(nc.connect(**options))
        gave_up = asyncio.ensure_future(all_failed.wait())
        try:
            done, _ = await asyncio.wait(
                {task, gave_up}, timeout=connect_wait, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # cancelled: stop connecting
            task.cancel()
            raise
        finally:
            gave_up.cancel()
        if task in done and task.exception() is None:
            connecting = False
            log.info("NATS: connected to %s", store._server_name())
            return store
        if task in done:
            failed.append(_describe(task.exception()))  # type: ignore[arg-type]
        else:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await nc.close()
        reason = failed[-1] if failed else f"no answer within {connect_wait:g} s"
        raise StoreError(f"NATS: cannot connect to {', '.join(servers)}: {reason} (is nats-server running?)")

    def _server_name(self) -> str:
        url = self._nc.connected_url
        return url.geturl() if url is not None else ",".join(self._servers)

    def _on_error(self, err: Exception) -> None:
        text = str(err)
        if "permissions violation" in text.lower():
            self._last_denial = (time.monotonic(), text.lower())
            for fut, needles in list(self._denial_waiters.items()):
                if not fut.done() and any(n in text.lower() for n in needles):
                    fut.set_result(text)
            log.warning("NATS: %s", _describe(err))
        else:
            log.debug("NATS: %s", _describe(err))

    @property
    def connected(self) -> bool:
        """True while the connection to a server is up (False while reconnecting)."""
        return self._nc.is_connected

    async def close(self) -> None:
        """Close the connection; pending watches end."""
        self._closing = True
        with contextlib.suppress(Exception):
            await self._nc.close()

    # Calls with error mapping

    async def _call(self, action: str, coro: Awaitable[T], needles: Iterable[str]) -> T:
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
            raise StoreError(f"NATS refused {action}: permission denied")
        try:
            return task.result()
        except (TimeoutError, nats.errors.Error, OSError) as e:
            self._raise(action, e)

    def _raise(self, action: str, err: BaseException) -> NoReturn:
        if isinstance(err, nats.js.errors.KeyWrongLastSequenceError) or (
            isinstance(err, nats.js.errors.APIError) and err.err_code in _WRONG_LAST_SEQUENCE
        ):
            raise RevisionMismatchError(f"NATS: {action}: revision mismatch ({_describe(err)})")
        if isinstance(err, nats.errors.NoRespondersError):
            raise StoreError(
                f"NATS: {action}: no JetStream on the server (start nats-server with -js)"
            ) from None
        if isinstance(err, asyncio.TimeoutError):
            hint = "is the server reachable and JetStream healthy?"
            if self._last_denial and time.monotonic() - self._last_denial[0] < 30:
                hint = f"the server recently said: {self._last_denial[1]}"
            state = "" if self.connected else " while disconnected"
            raise StoreError(
                f"NATS: {action}: timed out after {REQUEST_TIMEOUT:g} s{state} ({hint})"
            ) from None
        raise StoreError(f"NATS: {action}: {_describe(err)}") from None

    def _bucket_kv(self) -> KeyValue:
        if self._kv is None:
            raise StoreError("NATS: no bucket opened (call open_bucket first)")
        return self._kv

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    # The bucket

    async def open_bucket(self, bucket: str, *, create: bool, replicas: int = 1) -> None:
        """Use `bucket`; if it is missing, create it (see BUCKET_* limits) or refuse."""
        kv = await self._call(f"opening bucket {bucket}", self._lookup(bucket), _JS_API)
        if kv is None:
            if not create:
                raise StoreError(
                    f"NATS: bucket {bucket} does not exist; create it "
                    f"(nats kv add {bucket} --history {BUCKET_HISTORY} "
                    f"--max-value-size {BUCKET_MAX_VALUE_SIZE}) or set create_bucket: true"
                )
            kv_config = KeyValueConfig(
                bucket=bucket,
                # 2.11+: expired keys (per-key TTL) leave a delete marker watchers see, kept
                # this long. Older servers would refuse the field, so only ask where it exists.
                limit_marker_ttl=MARKER_TTL if self.server_version >= (2, 11) else None,
                history=BUCKET_HISTORY,
                max_value_size=BUCKET_MAX_VALUE_SIZE,
                replicas=replicas,
                storage=StorageType.FILE,
            )
            kv = await self._call(f"creating bucket {bucket}", self._create_bucket(kv_config), _JS_API)
        self._kv = kv
        self._bucket = bucket
        status = await self._call(f"reading bucket {bucket}", kv.status(), _JS_API)
        self.ttl_supported = bool(getattr(status.stream_info.config, "allow_msg_ttl", False)) and (
            self.server_version >= (2, 11)
        )

    @property
    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the server we are connected to; (0, 0) if unknown."""
        v = self._nc.connected_server_version
        return (v.major or 0, v.minor or 0)

    async def server_time(self) -> datetime | None:
        """The server's timestamp of the newest message in the bucket: a clock we share with
        every node (never the local clock), fresh as long as any node heartbeats."""
        kv = self._bucket_kv()
        _, last = await self.stream_info()
        if last == 0:
            return None
        try:
            msg = await self._call(
                f"reading bucket {self._bucket}",
                self._js.get_msg(kv._stream, seq=last, direct=kv._direct),
                _JS_API,
            )
        except StoreError:
            return None
        return msg.time

    async def _lookup(self, bucket: str) -> KeyValue | None:
        try:
            return await self._js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return None

    async def _create_bucket(self, kv_config: KeyValueConfig) -> KeyValue:
        try:
            kv = await self._js.create_key_value(kv_config)
        except nats.js.errors.APIError as e:
            # Another node created it first with other limits ("stream name already in
            # use with a different configuration", 10058): use theirs.
            if e.err_code != 10058:
                raise
            return await self._js.key_value(kv_config.bucket)
        log.info(
            "NATS: created bucket %s (history %d, max value %d bytes, %d replica(s))",
            kv_config.bucket,
            BUCKET_HISTORY,
            BUCKET_MAX_VALUE_SIZE,
            kv_config.replicas,
        )
        return kv

    async def stream_info(self) -> tuple[str, int]:
        """(identity of the bucket's stream, its last sequence): a new identity means recreated."""
        kv = self._bucket_kv()
        status = await self._call(f"reading bucket {self._bucket}", kv.status(), _JS_API)
        info = status.stream_info
        ident = info.created.isoformat() if info.created is not None else info.config.name or ""
        return ident, int(info.state.last_seq or 0)

    # Keys

    async def get(self, key: str) -> Entry | None:
        """The key's latest value, or None if it is missing, deleted or purged."""
        kv = self._bucket_kv()
        return await self._call(f"reading {self._subject(key)}", _get_or_none(kv, key), _JS_API)

    def _ttl(self, ttl: float | None) -> float | None:
        return ttl if ttl is not None and self.ttl_supported else None

    async def create(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Store value under key if the key has no value (also after a delete); its revision.

        `ttl` (seconds) makes the server expire the key unless rewritten (2.11+; ignored before).
        """
        kv = self._bucket_kv()
        subject = self._subject(key)
        try:
            return await self._call(
                f"publish to {subject}", kv.create(key, value, msg_ttl=self._ttl(ttl)), (subject,)
            )
        except RevisionMismatchError:
            raise KeyExistsError(f"NATS: {key} already exists in bucket {self._bucket}") from None

    async def update(self, key: str, value: bytes, revision: int, ttl: float | None = None) -> int:
        """Replace key's value if its latest revision is still `revision`; the new revision."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        ttl = self._ttl(ttl)
        if ttl is None:
            op = kv.update(key, value, last=revision)
        else:  # KeyValue.update() takes no TTL: publish with the same CAS header ourselves
            op = self._publish_cas(subject, value, revision, ttl)
        return await self._call(f"publish to {subject}", op, (subject,))

    async def _publish_cas(self, subject: str, value: bytes, revision: int, ttl: float) -> int:
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        ack = await self._js.publish(subject, value, headers=headers, msg_ttl=ttl)
        return int(ack.seq)

    async def put(self, key: str, value: bytes) -> int:
        """Store value under key unconditionally; its revision."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        return await self._call(f"publish to {subject}", kv.put(key, value), (subject,))

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Put a delete marker on key; with `revision`, only if that is still its latest."""
        kv = self._bucket_kv()
        subject = self._subject(key)
        if revision is not None and revision <= 0:
            raise ValueError(f"revision must be positive (got {revision})")
        await self._call(f"publish to {subject}", kv.delete(key, last=revision), (subject,))

    async def watch(self, pattern: str = "peers.*") -> AsyncGenerator[Entry | None, None]:
        """Every current entry matching pattern, then one None (snapshot complete), then changes.

        Changes include DEL and PURGE markers. An entry may come twice (after a consumer
        reset), so applying one must be idempotent. The watch never ends by itself; in
        particular it goes silent if the bucket is deleted and recreated (compare
        stream_info() to notice).

        The None is ours, not nats-py's: nats-py can send its marker before messages
        already on the wire (nats.py#842), which makes a full bucket look empty. We ask
        the consumer how many messages it holds for us (delivered + pending) once it
        exists, and mark the snapshot complete only after that many have arrived: every
        entry present when the watch started is in the snapshot. Should the server count
        one too many (it has, with deliver-last-per-subject), the first message reporting
        nothing pending followed by a quiet SNAPSHOT_QUIET completes it instead.
        """
        kv = self._bucket_kv()
        what = f"watching {self._subject(pattern)}"
        watcher = await self._call(what, kv.watch(pattern), _JS_API)
        try:
            sub = watcher._sub
            assert sub is not None  # set by kv.watch()
            info = await self._call(what, sub.consumer_info(), _JS_API)
            owed = (info.delivered.consumer_seq if info.delivered else 0) + (info.num_pending or 0)
            seen, drained = 0, False
            if owed == 0:
                yield None
            updates = aiter(watcher)  # `async for` is ~2.5x faster than watcher.updates() (FACTS.md)
            while True:
                try:
                    if seen < owed and drained:
                        e = await asyncio.wait_for(anext(updates), SNAPSHOT_QUIET)
                    else:
                        e = await anext(updates)
                except TimeoutError:
                    seen = owed
                    yield None
                    continue
                except StopAsyncIteration:
                    return  # the watcher was stopped
                if e is None:
                    continue  # nats-py's marker: see above
                yield _entry(e)
                if seen < owed:
                    seen += 1
                    drained = e.delta == 0
                    if seen == owed:
                        yield None
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]


async def _get_or_none(kv: KeyValue, key: str) -> Entry | None:
    """The key's latest entry with its server timestamp (kv.get() drops the timestamp)."""
    subject = f"{kv._pre}{key}"
    try:
        msg = await kv._js.get_msg(kv._stream, subject=subject, direct=kv._direct)
    except nats.js.errors.NotFoundError:
        return None
    if msg.subject != subject:
        return None
    op = (msg.headers or {}).get("KV-Operation")
    if op in ("DEL", "PURGE") or (msg.headers or {}).get("Nats-Marker-Reason"):
        return None
    return Entry(key=key, value=msg.data or b"", revision=msg.seq or 0, operation="PUT", created=msg.time)


def _readable(path: Path, field: str) -> Path:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise StoreError(f"NATS: {field} {path}: {e.strerror}") from None
    return path


def _tls_context(config: Config) -> ssl.SSLContext | None:
    """A client TLS context from nats_tls_ca/cert/key, or None if none is set."""
    if config.nats_tls_ca is None and config.nats_tls_cert is None and config.nats_tls_key is None:
        return None
    if (config.nats_tls_cert is None) != (config.nats_tls_key is None):
        raise StoreError("NATS: nats_tls_cert and nats_tls_key must be given together")
    try:
        ctx = ssl.create_default_context(
            cafile=str(config.nats_tls_ca) if config.nats_tls_ca is not None else None
        )
        if config.nats_tls_cert is not None and config.nats_tls_key is not None:
            ctx.load_cert_chain(str(config.nats_tls_cert), str(config.nats_tls_key))
    except (OSError, ssl.SSLError) as e:
        raise StoreError(f"NATS: loading TLS files: {e}") from None
    return ctx
