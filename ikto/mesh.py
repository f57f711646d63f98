"""The mesh as the bucket describes it: every entry validated on its own, conflicts settled.

Pure and incremental: applying one bucket event costs O(1) (plus the handful of entries
that share its public key), and reports which WireGuard peers (by public key) may need
to change. Nothing here touches NATS or WireGuard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address, ip_network

from ikto import ipam, keys
from ikto.config import unusable_endpoint_reason
from ikto.ipam import Network
from ikto.models import Peer

MAX_VALUE_BYTES = 4096
REQUIRED = ("name", "public_key", "advertise_address", "allowed_ip", "wg_port")


class EntryError(ValueError):
    """Why a bucket entry was rejected (one line)."""


@dataclass(frozen=True, slots=True)
class MeshSpec:
    """What every entry is checked against."""

    cidr: Network
    prefix: int
    self_public_key: str
    self_key: str  # our own bucket key

    def with_self_key(self, key: str) -> MeshSpec:
        return MeshSpec(self.cidr, self.prefix, self.self_public_key, key)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry that was skipped, and why."""

    key: str
    revision: int
    reason: str


def _is_printable(s: str) -> bool:
    return all(32 <= ord(c) != 127 for c in s)


def parse_entry(key: str, value: bytes, spec: MeshSpec) -> Peer:
    """Validate one bucket entry on its own; raise EntryError with the reason."""
    if len(value) > MAX_VALUE_BYTES:
        raise EntryError(f"value is {len(value)} bytes (limit {MAX_VALUE_BYTES})")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryError("value is not UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EntryError(f"value is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise EntryError(f"value is a JSON {type(data).__name__}, not an object")
    if "allowed_ip" not in data and "private_cidr" in data:  # pre-v0.3 name of the field
        data["allowed_ip"] = data["private_cidr"]
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        raise EntryError(f"missing field(s): {', '.join(missing)}")
    for f in ("name", "public_key", "advertise_address", "allowed_ip"):
        if not isinstance(data[f], str):
            raise EntryError(f"{f} is a {type(data[f]).__name__}, not a string")
    port = data["wg_port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise EntryError(f"wg_port is a {type(port).__name__}, not an integer")
    if not 1 <= port <= 65535:
        raise EntryError(f"wg_port {port} is out of range 1-65535")

    name = data["name"]
    if len(name) > 64 or not _is_printable(name):
        raise EntryError("name has control characters or is longer than 64 characters")

    if not keys.is_valid_public_key(data["public_key"]):
        raise EntryError("public_key is not a 32-byte base64 key (or is all zeros)")
    public_key = data["public_key"]

    try:
        allowed = ip_network(data["allowed_ip"], strict=True)
    except ValueError:
        raise EntryError(f"allowed_ip {data['allowed_ip']!r} is not a network in CIDR form") from None
    # Integer compare, not subnet_of(): that fills cached properties on every network
    # object (2 MiB at 10k peers) and is slow.
    mesh = spec.cidr
    shift = mesh.max_prefixlen - mesh.prefixlen
    if (
        allowed.version != mesh.version
        or allowed.prefixlen < mesh.prefixlen
        or int(allowed.network_address) >> shift != int(mesh.network_address) >> shift
    ):
        raise EntryError(f"allowed_ip {allowed} is outside the mesh {spec.cidr}")
    if allowed.prefixlen != spec.prefix:
        raise EntryError(f"allowed_ip {allowed} is not a /{spec.prefix} (the mesh's subnet size)")
    if key != ipam.peer_key(allowed):
        raise EntryError(f"key does not match allowed_ip {allowed} (expected {ipam.peer_key(allowed)})")

    try:
        adv = ip_address(data["advertise_address"])
    except ValueError:
        raise EntryError(f"advertise_address {data['advertise_address']!r} is not an IP address") from None
    reason = unusable_endpoint_reason(adv)
    if reason:
        raise EntryError(f"advertise_address {adv} is {reason}")
    if adv.version == mesh.version and int(adv) >> shift == int(mesh.network_address) >> shift:
        raise EntryError(f"advertise_address {adv} is inside the mesh")

    if public_key == spec.self_public_key and key != spec.self_key:
        raise EntryError("uses our public key")
    if key == spec.self_key and public_key != spec.self_public_key:
        raise EntryError("claims our address with another public key")
    return Peer(name, public_key, adv, allowed, port)


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
            peer = parse_entry(key, value, self.spec)
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

    def silent_for(self, key: str, floor: float | None = None) -> float | None:
        """Seconds since key was last written, on the server's clock (None if unknown).

        `floor` restarts every clock (after an outage, everyone gets a fresh grace)."""
        w = self.written.get(key)
        if w is None or self.server_now is None:
            return None
        if floor is not None and floor > w:
            w = floor
        return max(0.0, self.server_now - w)

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
