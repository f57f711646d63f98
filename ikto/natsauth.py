"""Per-node NATS permissions for a mesh bucket: the nats-server `authorization` block. Pure.

Each node may publish only to its own entry `$KV.<bucket>.peers.<id>` and presence record
`$KV.<bucket>.alive.<id>`, to the witness records `$KV.<bucket>.seen.*` (what it sees of other
nodes: docs/liveness.md), plus the JetStream API subjects that reading and watching the bucket
need; never `$JS.>`. An admin
user creates the bucket. `ikto nats-permissions` prints the block; docs/nats-permissions.md
says how to use it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from ipaddress import ip_network

from ikto import ipam

SPEC = "USER:PASSWORD:SUBNET"


def node_publish(bucket: str, key: str) -> list[str]:
    """What a node with bucket key `key` (e.g. peers.MTk4…) may publish to."""
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.{key}",  # our entry: claim, candidate endpoints, put back, leave
        f"$KV.{bucket}.{ipam.alive_key(key)}",  # our presence record
        f"$KV.{bucket}.seen.*",  # witness records: what we see of other nodes
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
    """The user of a node pinned to subnet allowed_ip (e.g. 198.19.5.0/24); ValueError if bad."""
    if not user or not password:
        raise ValueError(f"node {user or '?'}: the user name and the password must not be empty")
    try:
        subnet = ip_network(allowed_ip)
    except ValueError as e:
        raise ValueError(f"node {user}: {allowed_ip!r} is not a subnet base with its prefix ({e})") from None
    return NodeUser(user, password, ipam.peer_key(subnet))


def parse_node(spec: str) -> NodeUser:
    """A NodeUser from `USER:PASSWORD:SUBNET` (the subnet may hold colons: IPv6)."""
    user, sep1, rest = spec.partition(":")
    password, sep2, subnet = rest.partition(":")
    if not (sep1 and sep2):
        raise ValueError(f"{spec!r}: expected {SPEC}, e.g. node1:s3cret:198.19.11.0/24")
    return node_user(user, password, subnet)


def parse_admin(spec: str) -> tuple[str, str]:
    """(user, password) from `USER:PASSWORD`."""
    user, sep, password = spec.partition(":")
    if not (sep and user and password):
        raise ValueError(f"admin {spec!r}: expected USER:PASSWORD, e.g. admin:s3cret")
    return user, password


def authorization(bucket: str, admin: tuple[str, str], nodes: list[NodeUser]) -> str:
    """A nats-server `authorization` block: one admin with every right, one user per node."""
    users = Counter([admin[0], *(n.user for n in nodes)])
    keys = Counter(n.key for n in nodes)
    if twice := [u for u, k in users.items() if k > 1]:
        raise ValueError(f"user {twice[0]!r} is given twice: every node needs its own user")
    if twice := [key for key, k in keys.items() if k > 1]:
        raise ValueError(f"two nodes share the subnet of key {twice[0]}: every node needs its own")
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
