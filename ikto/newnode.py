"""A new node's config (`ikto init`): a random subnet of the mesh, a key, this host's address."""

from __future__ import annotations

import sys
from ipaddress import ip_address, ip_network
from pathlib import Path

from ikto import ipam, keys
from ikto.config import Config, load_config
from ikto.errors import UsageError

PRIVATE_ADDRESS_WARNING = (
    "ikto: warning: {address} (this host's address on its default route) is a private address; "
    "nodes outside its network cannot reach it directly. If this host has a public address "
    "(or a port forwarded to it), pass --advertise-address; otherwise the agent publishes "
    "where other nodes and the NATS server see it (NAT traversal), which works unless both "
    "sides of a pair are behind NATs that randomise ports"
)


def new_config(
    *,
    mesh_ip_net: str,
    subnet_prefix_length: int,
    private_key_path: Path,
    name: str | None,
    advertise_address: str | None,
    private_address: str | None,
    nats_url: str | None,
    nats_kv: str | None,
    wg_dev_name: str | None,
    wg_port: int | None,
) -> Config:
    """Validate the flags, create the key if missing, and return the node's config.

    Warns (on stderr) when the advertise address it picked is not globally routable.
    """
    try:
        mesh = ip_network(mesh_ip_net, strict=True)
    except ValueError as e:
        raise UsageError(f"--mesh-ip-net: {e}") from None
    try:
        ipam.check_subnet_prefix(mesh, subnet_prefix_length)
    except ValueError as e:
        raise UsageError(f"--subnet-prefix-length: {e}") from None
    if private_address is not None:
        try:
            base = ip_address(private_address)
            ipam.node_subnet(mesh, base, subnet_prefix_length)
        except ValueError as e:
            raise UsageError(f"--private-address: {e}") from None
    else:
        base = ipam.random_subnet(mesh, subnet_prefix_length).network_address
    if advertise_address is None:
        from ikto.wg import default_source_address

        found = default_source_address()
        if found is None:
            raise UsageError("no default route to take an address from; pass --advertise-address")
        advertise_address = str(found)
        if not found.is_global:
            print(PRIVATE_ADDRESS_WARNING.format(address=found), file=sys.stderr)
    _, created = keys.write_private_key(private_key_path)
    if not created:
        print(f"ikto: using the existing key at {private_key_path}", file=sys.stderr)
    return load_config(
        None,
        name=name,
        advertise_address=advertise_address,
        private_address=str(base),
        address_pinned=True if private_address is not None else None,
        subnet_prefix=subnet_prefix_length,
        mesh_cidr=str(mesh),
        private_key_path=str(private_key_path),
        nats_url=nats_url,
        nats_kv=nats_kv,
        wg_dev_name=wg_dev_name,
        wg_port=wg_port,
    )
