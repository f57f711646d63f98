"""Persistent private mount namespaces, one per node.

wireguard-go keeps its control sockets in /run/wireguard, and that directory is shared
by every network namespace: two nodes' `wg-ikto` would collide. So each node also gets
its own mount namespace, kept alive by a bind mount of its nsfs file, in which
/run/wireguard, /run/ikto, /etc/wireguard and /etc/ikto are bind mounts of per-node
directories in the lab state dir (keys and configs survive agent restarts).
See unshare(1), "--mount=file", for why the file's directory must be a private mount.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ikto_lab.facts import mounts_under
from ikto_lab.shell import run

# Directory in the node -> name of its backing directory in the node's state dir.
PRIVATE_DIRS = {
    "/run/wireguard": "run-wireguard",
    "/run/ikto": "run-ikto",
    "/etc/wireguard": "etc-wireguard",
    "/etc/ikto": "etc-ikto",
}


def make_private_dir(path: Path) -> None:
    """Bind path onto itself as a private mount, so nsfs files can be bound inside it."""
    path.mkdir(parents=True, exist_ok=True)
    if str(path) not in mounts_under(_mountinfo(), str(path)):
        run(["mount", "--bind", str(path), str(path)])
    run(["mount", "--make-private", str(path)])


def create(ns_file: Path, netns_file: Path, node_dir: Path, ns_dir: Path) -> None:
    """Create a persistent mount namespace at ns_file with the node's private directories.

    It is created from inside the node's netns so its fresh /sys shows the node's links
    (as `ip netns exec` does).
    """
    for target, source in PRIVATE_DIRS.items():
        (node_dir / source).mkdir(parents=True, exist_ok=True)
        # The mount point must exist; an empty directory on the host is harmless.
        Path(target).mkdir(parents=True, exist_ok=True)
    ns_file.touch()
    binds = [
        f"mount --bind {shlex.quote(str(node_dir / src))} {shlex.quote(tgt)}"
        for tgt, src in PRIVATE_DIRS.items()
    ]
    script = " && ".join(
        [
            "set -e",
            "umount -l /sys",
            "mount -t sysfs sysfs /sys",
            *binds,
            # Drop our copies of other nodes' namespace handles so they don't pin them.
            f"umount -l {shlex.quote(str(ns_dir))}",
            # An empty /run/netns: a copy would pin every netns, and the bare mount points
            # under an unmounted one make `ip` print "Peer netns reference is invalid".
            "{ umount -l /run/netns 2>/dev/null || true; }",
            "mount -t tmpfs -o size=64k,mode=755 ikto-lab-netns /run/netns",
        ]
    )
    run(
        [
            "nsenter", f"--net={netns_file}", "--",
            "unshare", f"--mount={ns_file}", "--propagation", "private", "--",
            "/bin/sh", "-c", script,
        ]
    )  # fmt: skip


def unmount_all(root: Path) -> None:
    """Unmount everything at or below root (nsfs files first, then root itself)."""
    for point in mounts_under(_mountinfo(), str(root)):
        run(["umount", "-l", point], check=False)


def _mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return f.read()
