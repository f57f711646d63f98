"""The typed values the agent's parts hand to the agent: one queue, routed in dispatch.py."""

from __future__ import annotations

from dataclasses import dataclass

from ikto.config import Config
from ikto.mesh import Mesh
from ikto.models import Peer


@dataclass(frozen=True, slots=True)
class SnapshotLoaded:
    """The follower read a complete snapshot into a fresh mesh (it is the mesh from now on)."""

    mesh: Mesh


@dataclass(frozen=True, slots=True)
class PeersChanged:
    """Bucket changes touched these WireGuard peers (public keys)."""

    public_keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class OwnEntrySeen:
    """The watch delivered our own key: its value and revision (value None: deleted)."""

    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class EntryChecked:
    """A read of our own entry found it at this revision (the watch must have delivered it);
    `anomaly`: it was missing, older than we knew, or not ours (check the bucket itself)."""

    revision: int
    anomaly: bool = False


@dataclass(frozen=True, slots=True)
class Moved:
    """Our address was taken: we hold this new one now (persisted in the config file)."""

    peer: Peer
    config: Config


@dataclass(frozen=True, slots=True)
class RebuildWatch:
    """Read the bucket again from a fresh snapshot, for this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The NATS connection came back after a disconnect."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time to take liveness decisions again."""


Event = (
    SnapshotLoaded | PeersChanged | OwnEntrySeen | EntryChecked | Moved | RebuildWatch | Reconnected
    | Tick
)
