"""Routed networks: networks a node carries behind it (a site LAN, a container bridge, a pod
range), announced in its entry and reserved in the bucket like addresses. The rules are pure.

WireGuard gives an AllowedIP to whichever peer was configured last, so two nodes announcing
one network would steal it from each other. So each network is reserved (create-if-absent on
`routes.<base64url of the network>`, naming the holder's entry key), a peer's announced network
is applied only while the reservation names that peer, and networks that overlap the mesh,
another applied network, ours, or a default route (unless announced by an exit node) are
refused and reported.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ikto.ipam import Network

KEY_PREFIX = "routes."
MAX_ROUTES = 32  # per node


def route_key(net: Network) -> str:
    """The bucket key reserving a network: `routes.<base64url of its CIDR text>`."""
    return KEY_PREFIX + base64.urlsafe_b64encode(str(net).encode()).decode("ascii")


def overlaps(a: Network, b: Network) -> bool:
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))  # type: ignore[arg-type]


def is_default(net: Network) -> bool:
    return net.prefixlen == 0


def own_problems(routes: Iterable[Network], mesh: Network, exit_node: bool) -> list[str]:
    """Why our own configured routes cannot be announced (one line each; empty: fine)."""
    out: list[str] = []
    seen: list[Network] = []
    for r in routes:
        if is_default(r):  # holds the mesh, but the mesh's longer prefixes still win
            if not exit_node:
                out.append(f"{r} is a default route: set exit_node to announce it")
        elif overlaps(r, mesh):
            out.append(f"{r} overlaps the mesh {mesh}")
        for s in seen:
            if overlaps(r, s):
                out.append(f"{r} overlaps {s}, also in routes")
        seen.append(r)
    if len(seen) > MAX_ROUTES:
        out.append(f"{len(seen)} routes (at most {MAX_ROUTES})")
    return out


@dataclass(frozen=True, slots=True)
class Announced:
    """A network a peer announces, and whether its reservation names that peer."""

    net: Network
    holder_key: str  # the announcing peer's entry key
    exit: bool  # the peer says it is an exit node
    reserved: bool  # the reservation names this peer
    revision: int  # of the reservation (the earliest wins an overlap)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which announced networks are applied, by peer key, and which are refused and why."""

    applied: Mapping[str, tuple[Network, ...]]
    refused: Mapping[tuple[str, Network], str]


def decide(
    announced: Iterable[Announced], mesh: Network, ours: Iterable[Network], our_key: str
) -> Decision:
    """Apply every announced network that is reserved by its announcer and conflicts with
    nothing; among overlapping ones, the earliest reservation wins."""
    applied: dict[str, list[Network]] = {}
    refused: dict[tuple[str, Network], str] = {}
    taken: list[tuple[Network, str]] = []
    own = list(ours)
    for a in sorted(announced, key=lambda a: (not a.reserved, a.revision)):
        why = None
        if a.holder_key == our_key:
            continue
        if not a.reserved:
            why = "not reserved by this node (another node holds it, or its reservation is missing)"
        elif is_default(a.net) and not a.exit:
            why = "a default route from a node that is not an exit node"
        elif overlaps(a.net, mesh) and not is_default(a.net):
            why = f"overlaps the mesh {mesh}"
        elif any(overlaps(a.net, o) for o in own):
            why = "overlaps a network this node routes"
        else:
            clash = next((holder for net, holder in taken if overlaps(a.net, net)), None)
            if clash is not None:
                why = f"overlaps a network {clash} announced first"
        if why is not None:
            refused[(a.holder_key, a.net)] = why
            continue
        taken.append((a.net, a.holder_key))
        applied.setdefault(a.holder_key, []).append(a.net)
    return Decision({k: tuple(v) for k, v in applied.items()}, refused)


def host_warnings(routes: Iterable[Network], mesh: Network, proc_net: Path) -> list[str]:
    """What would keep our routed networks from working, though the config is valid: a network
    of the other family than the mesh, forwarding off (one line each; empty: fine)."""
    routes = list(routes)
    return family_problems(routes, mesh) + forwarding_problems(routes, proc_net)


def family_problems(routes: Iterable[Network], mesh: Network) -> list[str]:
    """Networks of the other family than the mesh: peers send to them from their own
    addresses of that family, not mesh addresses, so the answers do not come back through
    the mesh (the hosts there route them the usual way, if at all)."""
    other = {r for r in routes if r.version != mesh.version}
    return [
        f"{r} is IPv{r.version} but the mesh {mesh} is IPv{mesh.version}: other nodes send to it "
        f"from addresses outside the mesh and the answers do not come back through it; route "
        f"networks of the mesh's family (or use an IPv{r.version} mesh)"
        for r in sorted(other, key=str)
    ]


def forwarding_problems(routes: Iterable[Network], proc_net: Path) -> list[str]:
    """Why this host would not route for the mesh: forwarding off for a family we route."""
    out = []
    families = {r.version for r in routes}
    knobs = {4: proc_net / "ipv4" / "ip_forward", 6: proc_net / "ipv6" / "conf" / "all" / "forwarding"}
    for version in sorted(families):
        try:
            on = knobs[version].read_text().strip() == "1"
        except OSError:
            continue
        if not on:
            key = "net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding"
            out.append(
                f"IPv{version} forwarding is off, so this node cannot route its networks for the "
                f"mesh: sysctl -w {key}=1 (and set it in /etc/sysctl.d/)"
            )
    return out
