"""A node set up as ikto v0.3 (Go) sets itself up, with no ikto agent: mixed meshes.

v0.3 writes its entry once, `{name, public_key, advertise_address, allowed_ip, wg_port}` (no
`endpoints`), never refreshes it, and gives WireGuard every other entry as a peer at its
advertised endpoint, without persistent keepalive: it sends nothing by itself and only answers
the handshakes its peers start. Here a lab node is brought to that state by hand (wireguard-go,
`wg set`, `ip`), its entry written with the lab's admin tool; sync_peers() does what v0.3's
watch does when entries come and go. The plans are pure; bring_up() and sync_peers() run them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from ipaddress import ip_interface, ip_network
from typing import TYPE_CHECKING, Any

from ikto import ipam
from ikto.models import endpoint_text
from ikto_lab.driver import DEV, KEY_PATH

if TYPE_CHECKING:
    from ikto_lab.lab import NamespaceLab

V03_FIELDS = ("name", "public_key", "advertise_address", "allowed_ip", "wg_port")


def entry(config: Mapping[str, Any], public_key: str) -> tuple[str, str]:
    """(bucket key, value) of the node's entry exactly as v0.3 writes it, from an ikto config."""
    net = ip_network(f"{config['private_address']}/{config['subnet_prefix']}")
    value = {
        "name": config["name"],
        "public_key": public_key,
        "advertise_address": config["advertise_address"],
        "allowed_ip": str(net),
        "wg_port": int(config.get("wg_port", 51820)),
    }
    return ipam.peer_key(net), json.dumps(value, separators=(",", ":"))


def interface_commands(config: Mapping[str, Any]) -> list[list[str]]:
    """After `wireguard-go <dev>`: key, port, the subnet base with the mesh's prefix, up."""
    mesh = ip_network(config["mesh_cidr"])
    address = ip_interface(f"{config['private_address']}/{mesh.prefixlen}")
    dev = config.get("wg_dev_name", DEV)
    return [
        ["wg", "set", dev, "listen-port", str(config.get("wg_port", 51820)), "private-key", KEY_PATH],
        ["ip", "addr", "add", str(address), "dev", dev],
        ["ip", "link", "set", dev, "up"],
    ]


def peer_args(entries: Mapping[str, Any], own_key: str, have: set[str]) -> list[str]:
    """`wg set <dev>` arguments making WireGuard's peers the bucket's valid v0.3 entries (all but
    our own): each at advertise_address:wg_port, no keepalive; peers in `have` but not in the
    bucket are removed. `entries` is the admin tool's dump: {key: {"value": {...}}}."""
    want: dict[str, list[str]] = {}
    for key, item in sorted(entries.items()):
        v = item.get("value") if isinstance(item, Mapping) else None
        if key == own_key or not isinstance(v, Mapping) or not all(f in v for f in V03_FIELDS):
            continue
        endpoint = endpoint_text(ip_interface(v["advertise_address"]).ip, int(v["wg_port"]))
        want[v["public_key"]] = ["allowed-ips", str(v["allowed_ip"]), "endpoint", endpoint]
    args: list[str] = []
    for pk, rest in want.items():
        args += ["peer", pk, *rest]
    for pk in sorted(have - want.keys()):
        args += ["peer", pk, "remove"]
    return args


def bring_up(lab: NamespaceLab, node: str) -> str:
    """Start wireguard-go on node (created with `start=False`), write its v0.3 entry once and
    give it the bucket's peers; its bucket key."""
    config = lab.config(node)
    dev = config.get("wg_dev_name", DEV)
    lab.exec(node, ["wireguard-go", dev], check=True)  # daemonizes, inside the node's netns
    for argv in interface_commands(config):
        lab.exec(node, argv, check=True)
    public_key = lab.exec(node, ["wg", "show", dev, "public-key"], check=True).stdout.strip()
    key, value = entry(config, public_key)
    lab.admin("put", key, value)
    sync_peers(lab, node)
    return key


def sync_peers(lab: NamespaceLab, node: str) -> int:
    """What v0.3's watch does: WireGuard's peers set to the bucket's entries; how many peers."""
    config = lab.config(node)
    dev = config.get("wg_dev_name", DEV)
    key, _ = entry(config, "")
    have = set(lab.wg_device(node).peers)
    args = peer_args(lab.admin("dump"), key, have)
    if args:
        lab.exec(node, ["wg", "set", dev, *args], check=True)
    return len(lab.wg_device(node).peers)
