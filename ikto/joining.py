"""Joining the mesh: the steps the agent runs, in this order, before it counts as ready.

1. connect to NATS and open (or create) the bucket;
2. finish or abandon a key rotation a crash interrupted (rotation.py);
3. read the bucket and apply it to WireGuard (the follower's first snapshot);
4. only then claim our address and reserve our routed networks, and announce them.

So when the members learn of us we already hold them: their first packets find a peer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ikto.config import Config
from ikto.log import fields
from ikto.membership import Membership
from ikto.reservations import Reservations
from ikto.store import Store

log = logging.getLogger("ikto.agent")


async def connect(
    c: Config, on_disconnect: Callable[[], Awaitable[None]], on_reconnect: Callable[[], Awaitable[None]]
) -> Store:
    """Step 1: a connected store with the bucket open; nothing left open on failure."""
    store = await Store.connect(
        c, name=f"ikto-agent {c.name}", on_disconnect=on_disconnect, on_reconnect=on_reconnect
    )
    try:
        await store.open_bucket(c.nats_kv, create=c.create_bucket, replicas=c.bucket_replicas)
    except BaseException:
        await store.close()
        raise
    log.info("connected to NATS", extra=fields(bucket=c.nats_kv))
    return store


async def claim(membership: Membership, reservations: Reservations) -> bool:
    """Step 4: our address (membership may move us), our routed networks, and the entry that
    announces them. True when done (for retrying())."""
    await membership.refresh_endpoints(None)
    await membership.claim()
    c = membership.config
    routes = await reservations.reserve(c.routes, membership.key)
    await membership.announce(routes, c.exit_node and any(r.prefixlen == 0 for r in routes))
    return True


def entry_reader(store: Store, key: Callable[[], str]) -> Callable[[], Awaitable[bytes | None]]:
    """Step 2 reads our entry with this: its value, None if there is none."""

    async def read() -> bytes | None:
        held = await store.get(key())
        return held.value if held else None

    return read
