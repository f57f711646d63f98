"""The mesh as the bucket describes it: every entry validated on its own, conflicts settled.

Pure and incremental: applying one bucket event costs O(1) (plus the handful of entries
that share its public key), and reports which WireGuard peers (by public key) may need
to change. Nothing here touches NATS or WireGuard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ikto.entry import EntryError, MeshSpec, parse
from ikto.models import Peer

__all__ = ["Mesh", "MeshSpec", "Rejection"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry that was skipped, and why."""

    key: str
    revision: int
    reason: str


class Mesh:
    """The validated entries of the bucket, and the winning peer per public key."""

    def __init__(self, spec: MeshSpec) -> None:
        self.spec = spec
        self.entries: dict[str, tuple[int, Peer]] = {}
        self.rejected: dict[str, Rejection] = {}
        # public key → a key holding it; keys sharing one public key (rare) also in _shared.
        # Plain strings rather than a one-element set per peer: 2 MiB less at 10k peers.
        self._by_pubkey: dict[str, str] = {}
        self._shared: dict[str, set[str]] = {}
        # Liveness, on the server's clock (POSIX seconds): when each key was last written,
        # and the keys silent so long that they are left out of WireGuard (entries stay).
        self.written: dict[str, float] = {}
        self._digest: dict[str, int] = {}  # hash of each key's current value
        self.expired: set[str] = set()
        self.server_now: float | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def put(
        self, key: str, value: bytes, revision: int, written: datetime | None = None
    ) -> tuple[set[str], Rejection | None]:
        """Apply a PUT (written: the server's timestamp). Returns (public keys to re-check,
        the new rejection if any)."""
        self._saw(key, written)
        # Heartbeats rewrite the same bytes every few seconds: at 10k nodes that is ~1,000
        # events a second. An unchanged value keeps its verdict and its first revision (so a
        # public-key conflict does not flip with every heartbeat); only its clock moves on.
        digest = hash(value)
        if self._digest.get(key) == digest and (key in self.entries or key in self.rejected):
            if key in self.expired:  # it spoke again: back into WireGuard
                self.expired.discard(key)
                return {self.entries[key][1].public_key}, None
            return set(), None
        self._digest[key] = digest
        touched = self._drop(key)
        try:
            peer = parse(key, value, self.spec)
        except EntryError as e:
            old = self.rejected.get(key)
            rej = Rejection(key, revision, str(e))
            self.rejected[key] = rej
            new = None if old is not None and old.reason == rej.reason else rej
            return touched, new
        self.rejected.pop(key, None)
        self.entries[key] = (revision, peer)
        pk = peer.public_key
        if pk not in self._by_pubkey:
            self._by_pubkey[pk] = key
        else:
            self._shared.setdefault(pk, {self._by_pubkey[pk]}).add(key)
        touched.add(pk)
        return touched, None

    def delete(self, key: str, written: datetime | None = None) -> set[str]:
        """Apply a DEL or PURGE. Returns the public keys to re-check."""
        self._saw(None, written)
        self.rejected.pop(key, None)
        self.written.pop(key, None)
        self._digest.pop(key, None)
        return self._drop(key)

    def _saw(self, key: str | None, written: datetime | None) -> None:
        if written is None:
            return
        t = written.timestamp()
        if self.server_now is None or t > self.server_now:
            self.server_now = t
        if key is not None:
            self.written[key] = t

    def set_expired(self, keys: set[str]) -> set[str]:
        """Leave these keys out of WireGuard (or bring back those not listed); touched keys."""
        changed = keys ^ self.expired
        self.expired = set(keys)
        return {self.entries[k][1].public_key for k in changed if k in self.entries}

    def _drop(self, key: str) -> set[str]:
        self.expired.discard(key)
        old = self.entries.pop(key, None)
        if old is None:
            return set()
        pk = old[1].public_key
        shared = self._shared.get(pk)
        if shared is not None:
            shared.discard(key)
            self._by_pubkey[pk] = next(iter(shared))
            if len(shared) == 1:
                del self._shared[pk]
        elif self._by_pubkey.get(pk) == key:
            del self._by_pubkey[pk]
        return {pk}

    def _earliest(self, keys: set[str]) -> str:
        return min(keys, key=lambda k: self.entries[k][0])

    def winner(self, public_key: str) -> Peer | None:
        """The peer WireGuard should hold for a public key: the earliest revision wins."""
        shared = self._shared.get(public_key)
        if shared:
            live = {k for k in shared if k not in self.expired}
            return self.entries[self._earliest(live)][1] if live else None
        key = self._by_pubkey.get(public_key)
        if key is None or key in self.expired:
            return None
        return self.entries[key][1]

    def losers(self) -> dict[str, str]:
        """Keys that lost a public-key conflict, with the key that won."""
        out: dict[str, str] = {}
        for holders in self._shared.values():
            win = self._earliest(holders)
            out.update({k: win for k in holders if k != win})
        return out

    def peers(self) -> list[Peer]:
        """Every winning peer except ourselves."""
        return [
            p
            for pk in self._by_pubkey
            if pk != self.spec.self_public_key and (p := self.winner(pk)) is not None
        ]

    def revision_of(self, key: str) -> int | None:
        e = self.entries.get(key)
        return e[0] if e else None

    def public_keys(self) -> list[str]:
        """Every public key some valid entry holds (conflict losers and expired ones included)."""
        return list(self._by_pubkey)

    def holder(self, public_key: str) -> tuple[str, Peer] | None:
        """A key holding this public key and its peer, whether it wins or not (None: no entry)."""
        shared = self._shared.get(public_key)
        key = self._earliest(shared) if shared else self._by_pubkey.get(public_key)
        return (key, self.entries[key][1]) if key is not None else None

    def others(self) -> list[tuple[str, Peer]]:
        """Every valid entry but our own, as (key, peer)."""
        return [(k, p) for k, (_, p) in self.entries.items() if k != self.spec.self_key]
