"""Facts: parse what `wg show dump`, `ip -j addr` and /proc/self/mountinfo report. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network

from ikto.ipam import Interface, Network


@dataclass(frozen=True)
class WgPeer:
    """One peer as the kernel (or wireguard-go) reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[Network, ...]
    latest_handshake: int
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class WgDevice:
    """`wg show <dev> dump`: the interface line and its peers by public key."""

    public_key: str
    listen_port: int
    peers: dict[str, WgPeer]

    def peer_set(self) -> frozenset[tuple[str, str | None, tuple[str, ...]]]:
        """What must not churn: (public key, endpoint, sorted allowed-ips) per peer."""
        return frozenset(
            (p.public_key, p.endpoint, tuple(sorted(str(n) for n in p.allowed_ips)))
            for p in self.peers.values()
        )


def parse_wg_dump(text: str) -> WgDevice:
    """Parse `wg show <dev> dump` (first line: the interface; then one line per peer)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty `wg show dump` output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ValueError(f"unexpected interface line in `wg show dump`: {lines[0]!r}")
    peers: dict[str, WgPeer] = {}
    for ln in lines[1:]:
        f = ln.split("\t")
        if len(f) != 8:
            raise ValueError(f"unexpected peer line in `wg show dump`: {ln!r}")
        allowed = tuple(
            ip_network(a, strict=False) for a in f[3].split(",") if a and a != "(none)"
        )
        peers[f[0]] = WgPeer(
            public_key=f[0],
            endpoint=None if f[2] == "(none)" else f[2],
            allowed_ips=allowed,
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
        )
    return WgDevice(public_key=head[1], listen_port=int(head[2]), peers=peers)


def parse_ip_addr(text: str) -> list[Interface]:
    """Global-scope addresses from `ip -j addr show dev <dev>`."""
    out: list[Interface] = []
    for link in json.loads(text or "[]"):
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            iface = ip_interface(f"{a['local']}/{a['prefixlen']}")
            assert isinstance(iface, IPv4Interface | IPv6Interface)
            out.append(iface)
    return out


def mounts_under(mountinfo: str, root: str) -> list[str]:
    """Mount points at or below root from /proc/self/mountinfo, deepest first."""
    root = root.rstrip("/")
    found = []
    for ln in mountinfo.splitlines():
        fields = ln.split(" ")
        if len(fields) < 5:
            continue
        # mountinfo escapes spaces and friends as octal (\040).
        point = fields[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))
