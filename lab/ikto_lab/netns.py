"""Network namespaces (through `ip`): create, enter, list and delete them; the lab's bridge and veths."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ikto_lab.shell import LabError, run

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    """The file `ip netns add` bind-mounts the namespace on."""
    return NETNS_DIR / name


def exists(name: str) -> bool:
    """True if netns `name` exists."""
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


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise LabError(f"entering {what}: setns: {os.strerror(e)} (needs root)")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the calling thread into netns `name` for the block, then back where it was.

    Processes and threads started inside inherit it; enter before starting any thread that
    must stay outside (setns(2) moves only the calling thread).
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(name), os.O_RDONLY)
        try:
            _setns(target, f"netns {name}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "the netns we came from")
    finally:
        os.close(home)


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
