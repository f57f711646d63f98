"""Claiming this node's subnet in the bucket: create-if-absent on its v0.3 key.

The key is derived from the subnet (ipam.peer_key), so two nodes wanting one subnet write
the same key, and JetStream's expected-last-subject-sequence check lets exactly one create
it. The loser moves to another random subnet, unless its address is pinned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ikto import entry, ipam, liveness
from ikto.errors import UsageError
from ikto.ipam import Network
from ikto.models import Peer
from ikto.store import Entry, KeyExistsError, RevisionMismatchError, Store, StoreError

log = logging.getLogger(__name__)

# How often to redo create/get/update on one address when other writers keep changing the
# key between our calls (deleted, or our own entry updated elsewhere).
RACE_RETRIES = 8


class AddressTakenError(StoreError, UsageError):
    """Our pinned address belongs to another node: the user must choose (exit 2)."""


async def claim(
    store: Store,
    self_peer: Peer,
    *,
    mesh: Network,
    prefix: int,
    pinned: bool,
    attempts: int = 8,
    pick: Callable[[], Network] | None = None,
    reclaim_after: float | None = None,
) -> tuple[Peer, int]:
    """Write our entry under our subnet's key unless another node holds it; (peer, revision).

    The returned peer has a different allowed_ip if ours was taken and we moved; the
    caller persists it. A holder whose entry is not valid JSON still counts as another node.

    With `reclaim_after`, a holder with no sign of life for that long on the server's clock
    (its entry, its presence record `alive.<id>`, what others saw of it `seen.<id>`) is dead:
    we take its key over with a compare-and-set on its revision, so a holder that comes back
    at the same moment wins instead.
    """
    pick = pick or (lambda: ipam.random_subnet(mesh, prefix))
    peer = self_peer
    tried: set[Network] = set()
    for attempt in range(1, attempts + 1):
        tried.add(peer.allowed_ip)
        result = await _claim_one(store, peer, reclaim_after)
        if isinstance(result, int):
            log.info("claimed %s as %s (revision %d)", peer.allowed_ip, peer.name, result)
            return peer, result
        holder = result
        if pinned:
            raise AddressTakenError(
                f"address {peer.allowed_ip} is taken by {entry.describe(holder.value)}; it is pinned "
                "(address_pinned), so not moving: pick another private_address or remove "
                f"that entry (key {holder.key})"
            )
        if attempt == attempts:
            break
        new = _pick_untried(pick, tried)
        log.warning(
            "address %s is taken by %s; trying %s", peer.allowed_ip, entry.describe(holder.value), new
        )
        peer = replace(peer, allowed_ip=new)
    raise AddressTakenError(
        f"could not claim an address in {mesh}: {attempts} subnets were all taken "
        "(is the mesh nearly full? use a shorter mesh_cidr prefix or a longer subnet_prefix)"
    )


async def _claim_one(store: Store, peer: Peer, reclaim_after: float | None) -> int | Entry:
    """Our revision if the key is ours now, else the entry of the node holding it."""
    key = ipam.peer_key(peer.allowed_ip)
    value = entry.encode(peer)
    for _ in range(RACE_RETRIES):
        try:
            return await store.create(key, value)
        except KeyExistsError:
            pass
        holder = await store.get(key)
        if holder is None:
            continue  # deleted since our create: try again
        if entry.owner(holder.value) != peer.public_key:
            silent = await holder_silence(store, holder)
            if reclaim_after is None or not liveness.reclaimable(silent, reclaim_after):
                return holder
            log.warning(
                "reclaiming %s from %s, silent for %.0f s (reclaim_after %.0f s)",
                peer.allowed_ip, entry.describe(holder.value), silent, reclaim_after,
            )
        # Our own entry (a restart, or a changed name/endpoint), or a dead node's:
        # replace it in place, only if nobody wrote it since we read it.
        try:
            return await store.update(key, value, holder.revision)
        except RevisionMismatchError:
            continue
    raise StoreError(f"could not claim {peer.allowed_ip}: key {key} kept changing under us")


async def holder_silence(store: Store, holder: Entry) -> float | None:
    """Seconds since the holder's youngest sign of life on the server's clock (its entry, its
    presence record, a witness record), measured up to the bucket's newest write."""
    now = await store.server_time()
    if now is None:
        return None
    stamps = [holder.created]
    for key in (ipam.alive_key(holder.key), ipam.seen_key(holder.key)):
        record = await store.get(key)
        stamps.append(record.created if record is not None else None)
    known = [t for t in stamps if t is not None]
    return (now - max(known)).total_seconds() if known else None


def _pick_untried(pick: Callable[[], Network], tried: set[Network]) -> Network:
    for _ in range(100):
        new = pick()
        if new not in tried:
            return new
    raise StoreError("could not pick an untried subnet (the mesh is too small)")
