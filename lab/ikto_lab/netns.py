"""Network namespaces, the hub bridge and the veths joining nodes to it (all through `ip`)."""

from __future__ import annotations

import os
from pathlib import Path

from ikto_lab.shell import run

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


def list_with_prefix(prefix: str) -> list[str]:
    """Every netns whose name starts with `<prefix>-` (what a crashed lab may have left)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix + "-"))


def add(name: str) -> None:
    """Create a netns with its loopback up."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Delete a netns; a missing one is fine."""
    if exists(name):
        run(["ip", "netns", "del", name], check=False)


def pids(name: str) -> list[int]:
    """Processes whose network namespace is this one."""
    if not exists(name):
        return []
    cp = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def add_bridge(hub: str) -> None:
    """The lab's switch: a bridge inside the hub netns, never in the root netns."""
    run(["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", hub, "link", "set", BRIDGE, "up"])


def plug(hub: str, port: str, ns: str, address: str) -> None:
    """Join ns to the hub bridge: a veth `eth0` in ns holding address, `port` on the bridge."""
    run(["ip", "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "-n", hub, "link", "set", port, "master", BRIDGE, "up"])
    run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
