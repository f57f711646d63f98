"""Typed values shared by the modules: mesh nodes, WireGuard's view, and the plans to apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ikto.ipam import Address, Interface, Network


@dataclass(frozen=True, slots=True)
class Peer:
    """A validated mesh node, as the bucket describes it (v0.3 entry format)."""

    name: str
    public_key: str
    advertise_address: Address
    allowed_ip: Network
    wg_port: int
    # Candidate endpoints beyond the advertised one ("host:port"). None: the entry has no such
    # field, so it was written by ikto v0.3, which never writes presence records.
    endpoints: tuple[str, ...] | None = None
    routes: tuple[Network, ...] = ()  # networks it routes (applied only while reserved: routes.py)
    exit: bool = False  # it may announce a default route

    @property
    def endpoint(self) -> str:
        """host:port as WireGuard writes it (IPv6 in brackets)."""
        return endpoint_text(self.advertise_address, self.wg_port)

    @property
    def speaks(self) -> bool:
        """True for an ikto node, which writes its own presence record (v0.3 nodes do not)."""
        return self.endpoints is not None

    def candidates(self) -> tuple[str, ...]:
        """Every endpoint worth trying, the advertised one first, without repeats."""
        return tuple(dict.fromkeys((self.endpoint, *(self.endpoints or ()))))

    def to_entry(self) -> dict[str, object]:
        """The JSON object stored in the bucket (readable by ikto v0.3: extra fields are ignored)."""
        out: dict[str, object] = {
            "name": self.name,
            "public_key": self.public_key,
            "advertise_address": str(self.advertise_address),
            "allowed_ip": str(self.allowed_ip),
            "wg_port": self.wg_port,
        }
        if self.endpoints is not None:
            out["endpoints"] = list(self.endpoints)
        if self.routes:
            out["routes"] = [str(r) for r in self.routes]
        if self.exit:
            out["exit"] = True
        return out


def endpoint_text(address: Address, port: int) -> str:
    """host:port as WireGuard writes it (IPv6 in brackets)."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class LocalNode:
    """This node's side of the rendered WireGuard file."""

    name: str
    dev: str
    mesh: Network
    bucket: str
    address: Interface  # the subnet base with the mesh's prefix length
    port: int
    mtu: int | None
    keepalive: int


@dataclass(frozen=True, slots=True)
class WgPeer:
    """One peer as `wg show <dev> dump` reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int


@dataclass(frozen=True, slots=True)
class WgDevice:
    """The interface line of `wg show <dev> dump` plus its peers."""

    public_key: str
    listen_port: int
    fwmark: int
    peers: dict[str, WgPeer] = field(default_factory=dict)

    def peer_set(self) -> frozenset[tuple[str, str | None, tuple[str, ...]]]:
        """What must not churn: (public key, endpoint, sorted allowed-ips) per peer."""
        return frozenset(
            (p.public_key, p.endpoint, tuple(sorted(p.allowed_ips))) for p in self.peers.values()
        )


@dataclass(frozen=True, slots=True)
class Link:
    """The interface as `ip -j link show` reports it."""

    name: str
    up: bool
    mtu: int


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What we want WireGuard to hold for one peer."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str
    persistent_keepalive: int


@dataclass(frozen=True, slots=True)
class PeerWant:
    """The desired state of one public key: its config, or None with the reason it is left out."""

    name: str
    config: PeerConfig | None
    why_absent: str = "not in the bucket"
    # The session works: keep the endpoint WireGuard learned, whatever config.endpoint says.
    keep_endpoint: bool = False
    # No session: apply a new endpoint by removing and re-adding the peer in one `wg set`, so
    # WireGuard sends a handshake at once instead of at its next 5 s retry (docs/facts.md).
    readd: bool = False


@dataclass(frozen=True, slots=True)
class PeerChange:
    """One peer in a plan: what WireGuard held, what it will hold, and why (for logs and views)."""

    public_key: str
    name: str
    old: WgPeer | None
    new: PeerConfig | None
    why: str

    @property
    def kind(self) -> Literal["add", "change", "remove"]:
        if self.new is None:
            return "remove"
        return "add" if self.old is None else "change"


@dataclass(frozen=True, slots=True)
class Plan:
    """The difference to apply: peers to set (add or change) and public keys to remove.

    `changes` explains each of them; plans built by hand (tests, syncconf) may leave it empty.
    """

    set: tuple[PeerConfig, ...] = ()
    remove: tuple[str, ...] = ()
    changes: tuple[PeerChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)

    def __len__(self) -> int:
        return len(self.set) + len(self.remove)

    def without_removals(self) -> Plan:
        """The same plan, adding and changing only. A re-add (the same key removed and set
        again, for an immediate handshake) is a change: it keeps its remove."""
        readded = {p.public_key for p in self.set}
        return Plan(
            set=self.set,
            remove=tuple(k for k in self.remove if k in readded),
            changes=tuple(c for c in self.changes if c.new is not None),
        )
