"""Connecting to NATS: options tuned for an agent that must never give up, TLS and credentials."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from ikto.config import Config
from ikto.store.errors import StoreError, describe

log = logging.getLogger("ikto.store")

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], None]

# nats-py's defaults give up reconnecting after ~2 minutes and notice a dead link only after
# minutes (docs/facts.md, "NATS through nats-py"): set everything explicitly.
PING_INTERVAL = 5  # seconds; a silent link is declared dead after 3 missed PONGs: ~15-20 s
MAX_OUTSTANDING_PINGS = 3
RECONNECT_WAIT = 1  # seconds between attempts on one server (nats-py has no jitter option)
CONNECT_TIMEOUT = 2  # seconds for one TCP/TLS connect + handshake


async def connect(
    config: Config,
    *,
    name: str,
    on_error: ErrorCallback,
    on_disconnect: Callback | None,
    on_reconnect: Callback | None,
    is_closing: Callable[[], bool],
    connect_wait: float,
) -> Client:
    """A connected client; StoreError if no server answers within one pass.

    Once connected, the client reconnects forever. The first connection is given one
    attempt per server (and at most connect_wait seconds) so a wrong URL fails fast.
    """
    servers = config.nats_servers
    nc = Client()
    failed: list[str] = []
    all_failed = asyncio.Event()
    connecting = True

    def server_name() -> str:
        url = nc.connected_url
        return url.geturl() if url is not None else ",".join(servers)

    async def error_cb(err: Exception) -> None:
        if connecting:
            failed.append(describe(err, CONNECT_TIMEOUT))
            if len(failed) >= len(servers):
                all_failed.set()
            return
        on_error(err)

    async def disconnected_cb() -> None:
        if connecting or is_closing():
            return
        log.warning("NATS: disconnected from %s; reconnecting", server_name())
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected_cb() -> None:
        log.info("NATS: reconnected to %s", server_name())
        if on_reconnect is not None:
            await on_reconnect()

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
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
        log.info("NATS: connected to %s", server_name())
        return nc
    if task in done:
        failed.append(describe(task.exception(), CONNECT_TIMEOUT))  # type: ignore[arg-type]
    else:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    with contextlib.suppress(Exception):
        await nc.close()
    reason = failed[-1] if failed else f"no answer within {connect_wait:g} s"
    raise StoreError(f"NATS: cannot connect to {', '.join(servers)}: {reason} (is nats-server running?)")


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
