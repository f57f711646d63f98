"""The typed values the agent's parts hand to the agent: one queue, routed in agent.py."""

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
class HeartbeatWritten:
    """Our entry was rewritten at this revision: the watch must deliver it."""

    revision: int


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
    SnapshotLoaded | PeersChanged | OwnEntrySeen | HeartbeatWritten | Moved | RebuildWatch | Reconnected
    | Tick
)
