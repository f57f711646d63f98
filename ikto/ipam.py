"""Address management: random node subnets of the mesh, and the bucket's key scheme."""

from __future__ import annotations

import base64
import binascii
import secrets
import socket
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
Interface = IPv4Interface | IPv6Interface

KEY_PREFIX = "peers."


def random_subnet(mesh: Network, prefix: int, randbits: object = None) -> Network:
    """A random subnet of `mesh` with `prefix` bits, never the mesh's first subnet.

    The first subnet is reserved: its base is the mesh's own network address, which is
    not a usable host address on the interface (it carries the mesh prefix length).
    """
    check_subnet_prefix(mesh, prefix)
    bits = prefix - mesh.prefixlen
    draw = randbits if callable(randbits) else secrets.randbits
    while True:
        index = draw(bits)
        if index != 0:
            break
    width = mesh.max_prefixlen
    base = int(mesh.network_address) + (index << (width - prefix))
    if mesh.version == 4:
        return IPv4Network((base, prefix))
    return IPv6Network((base, prefix))


def check_subnet_prefix(mesh: Network, prefix: int) -> None:
    """Raise ValueError unless prefix is longer than the mesh's and fits the family."""
    if prefix > mesh.max_prefixlen:
        raise ValueError(
            f"subnet prefix /{prefix} is longer than an IPv{mesh.version} address "
            f"(at most /{mesh.max_prefixlen})"
        )
    if prefix <= mesh.prefixlen:
        raise ValueError(f"subnet prefix /{prefix} must be longer than the mesh's /{mesh.prefixlen}")


def node_subnet(mesh: Network, address: Address, prefix: int) -> Network:
    """The node subnet whose base is `address`; ValueError if misaligned or outside the mesh."""
    if address.version != mesh.version:
        raise ValueError(f"{address} is not an IPv{mesh.version} address like the mesh {mesh}")
    if address not in mesh:
        raise ValueError(f"{address} is outside the mesh {mesh}")
    subnet = (IPv4Network if mesh.version == 4 else IPv6Network)((address, prefix), strict=False)
    if subnet.network_address != address:
        raise ValueError(f"{address} is not aligned to /{prefix} (did you mean {subnet.network_address}?)")
    if address == mesh.network_address:
        raise ValueError(f"{address} is the mesh's own network address, which is reserved")
    return subnet


def interface_address(mesh: Network, subnet: Network) -> Interface:
    """The address put on the WireGuard interface: the subnet base with the mesh prefix.

    Carrying the mesh prefix makes the kernel route the whole mesh through the interface,
    so no per-peer routes are needed (the rendered config says `Table = off`).
    """
    if mesh.version == 4:
        return IPv4Interface((subnet.network_address, mesh.prefixlen))
    return IPv6Interface((subnet.network_address, mesh.prefixlen))


def address_text(a: Address) -> str:
    """str(a), fast: inet_ntop in C instead of ipaddress's pure-Python formatting.

    They agree (lowercase, longest zero run compressed, first on a tie) except for
    IPv6 addresses with an embedded IPv4 form (::a.b.c.d, ::ffff:a.b.c.d), left to str().
    str() of 10k IPv6 networks took ~100 ms of a 10k-peer render; inet_ntop ~10 ms.
    """
    if a.version == 4:
        return socket.inet_ntop(socket.AF_INET, a.packed)
    if int(a) >> 48:
        return socket.inet_ntop(socket.AF_INET6, a.packed)
    return str(a)


def network_text(net: Network) -> str:
    """str(net), fast (see address_text)."""
    return f"{address_text(net.network_address)}/{net.prefixlen}"


def peer_key(allowed_ip: Network) -> str:
    """The bucket key of a node subnet: `peers.` + base64url (padded) of its CIDR text (v0.3)."""
    return KEY_PREFIX + base64.urlsafe_b64encode(network_text(allowed_ip).encode()).decode("ascii")


def decode_peer_key(key: str) -> str:
    """The CIDR text encoded in a bucket key; ValueError if it is not one of ours."""
    if not key.startswith(KEY_PREFIX):
        raise ValueError(f"key {key!r} does not start with {KEY_PREFIX!r}")
    try:
        return base64.urlsafe_b64decode(key[len(KEY_PREFIX) :].encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(f"key {key!r} is not base64url of an address") from None


def unusable_endpoint_reason(a: Address) -> str | None:
    """Why an address cannot be a WireGuard endpoint, or None if it can."""
    if isinstance(a, IPv6Address) and a.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address (write the IPv4 address)"
    if a.is_unspecified:
        return "the unspecified address"
    if a.is_loopback:
        return "a loopback address"
    if a.is_multicast:
        return "a multicast address"
    if a.is_link_local:
        return "a link-local address"
    if a.version == 4 and int(a) == 0xFFFFFFFF:
        return "the broadcast address"
    if a.is_reserved and a.version == 4:
        return "a reserved address"
    return None


def parse_endpoint(text: str) -> tuple[Address, int]:
    """`198.18.0.1:51820` or `[2001:db8::1]:51820` as (address, port); ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses")
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address needs brackets, e.g. [2001:db8::1]:51820")
    try:
        address = ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 1-65535")
    return address, port


def alive_key(peer_key: str) -> str:
    """The key of a node's presence record: `alive.<id>` for `peers.<id>` (docs/liveness.md)."""
    return "alive." + peer_key.removeprefix(KEY_PREFIX)


def seen_key(peer_key: str) -> str:
    """The key where other nodes report seeing a node: `seen.<id>` for `peers.<id>`."""
    return "seen." + peer_key.removeprefix(KEY_PREFIX)
