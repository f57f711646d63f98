"""Per-node NATS permissions for a mesh bucket (see docs/nats-permissions.md).

Each node may publish only to its own key, `$KV.<bucket>.peers.<its key>`, plus the
JetStream API subjects that reading and watching the bucket need; never `$JS.>`. An admin
user creates the bucket. `python -m ikto.lab.natsauth` prints the `authorization` block.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from ipaddress import ip_network

from ikto import ipam


def node_publish(bucket: str, key: str) -> list[str]:
    """What a node with bucket key `key` (e.g. peers.MTk4…) may publish to."""
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.{key}",  # our entry: claim, heartbeat, leave
        "$JS.API.INFO",  # account info (nats-py asks before using JetStream)
        f"$JS.API.STREAM.INFO.{stream}",  # open the bucket; notice it was recreated
        f"$JS.API.DIRECT.GET.{stream}",  # the newest message by sequence (the server's clock)
        f"$JS.API.DIRECT.GET.{stream}.>",  # one key's latest value (restart, conflicts)
        f"$JS.API.STREAM.MSG.GET.{stream}",  # the same on streams without direct get
        f"$JS.API.CONSUMER.CREATE.{stream}",  # the watch (servers before 2.10)
        f"$JS.API.CONSUMER.CREATE.{stream}.>",  # the watch (2.10+: name and filter in the subject)
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",  # stop a watch
        f"$JS.FC.{stream}.>",  # flow-control replies of the watch's ordered consumer
    ]


@dataclass(frozen=True)
class NodeUser:
    """One node's NATS user: its name, password and bucket key."""

    user: str
    password: str
    key: str


def node_user(user: str, password: str, allowed_ip: str) -> NodeUser:
    """The user of a node pinned to subnet allowed_ip (e.g. 198.19.5.0/24)."""
    return NodeUser(user, password, ipam.peer_key(ip_network(allowed_ip)))


def authorization(bucket: str, admin: tuple[str, str], nodes: list[NodeUser]) -> str:
    """A nats-server `authorization` block: one admin with every right, one user per node."""
    lines = ["authorization {", "  users = ["]
    lines.append(f"    {{user: {json.dumps(admin[0])}, password: {json.dumps(admin[1])}}}")
    for n in nodes:
        perms = {
            "publish": {"allow": node_publish(bucket, n.key)},
            "subscribe": {"allow": ["_INBOX.>"]},
        }
        lines.append(
            f"    {{user: {json.dumps(n.user)}, password: {json.dumps(n.password)}, "
            f"permissions: {json.dumps(perms)}}}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print an authorization block for `user:password:allowed_ip` arguments."""
    p = argparse.ArgumentParser(prog="python -m ikto.lab.natsauth", description=__doc__)
    p.add_argument("--bucket", default="ikto-mesh")
    p.add_argument("--admin", default="admin:admin", help="user:password of the admin")
    p.add_argument("nodes", nargs="+", help="user:password:allowed_ip, one per node")
    args = p.parse_args(argv)
    admin_user, _, admin_pw = args.admin.partition(":")
    nodes = []
    for spec in args.nodes:
        user, pw, allowed = spec.split(":", 2)
        nodes.append(node_user(user, pw, allowed))
    sys.stdout.write(authorization(args.bucket, (admin_user, admin_pw), nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
