"""`ikto nats-permissions` and ikto.natsauth: each node may publish to its own key only."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_network

import pytest

from ikto import ipam
from ikto.natsauth import NodeUser, authorization, node_publish, node_user, parse_admin, parse_node

V6 = "fd10:6772:f964::/48"


def ikto(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikto", *args], capture_output=True, text=True, timeout=60)


def test_a_node_may_publish_to_its_own_key_and_the_read_and_watch_api_only() -> None:
    key = ipam.peer_key(ip_network("198.19.11.0/24"))
    allowed = node_publish("ikto-mesh", key)
    assert allowed[0] == f"$KV.ikto-mesh.{key}"
    # its entry, its presence record, and witness records about others; no other node's entry
    kv = [s for s in allowed if s.startswith("$KV.")]
    assert kv == [allowed[0], f"$KV.ikto-mesh.{ipam.alive_key(key)}", "$KV.ikto-mesh.seen.*"]
    assert not any(s.startswith("$KV.ikto-mesh.peers.") and s != allowed[0] for s in allowed)
    assert "$JS.>" not in allowed and "$JS.API.>" not in allowed
    assert not any("DELETE.KV" in s and "CONSUMER" not in s for s in allowed)  # no stream delete
    assert not any("PURGE" in s for s in allowed)


def test_node_specs_parse_with_ipv6_subnets() -> None:
    assert parse_node(f"node1:pw:{V6}") == NodeUser("node1", "pw", ipam.peer_key(ip_network(V6)))
    assert parse_admin("admin:s3cret") == ("admin", "s3cret")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("node1", "expected USER:PASSWORD:SUBNET"),
        ("node1:pw", "expected USER:PASSWORD:SUBNET"),
        (":pw:198.19.11.0/24", "must not be empty"),
        ("node1::198.19.11.0/24", "must not be empty"),
        ("node1:pw:198.19.11.1/24", "host bits set"),
        ("node1:pw:nonsense", "not a subnet"),
    ],
)
def test_bad_node_specs_say_what_is_wrong(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_node(spec)


@pytest.mark.parametrize("spec", ["admin", "admin:", ":pw"])
def test_bad_admin_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="expected USER:PASSWORD"):
        parse_admin(spec)


def test_the_block_has_one_admin_and_one_restricted_user_per_node() -> None:
    nodes = [node_user("n1", "p1", "198.19.11.0/24"), node_user("n2", 'p"2', V6)]
    block = authorization("ikto-mesh", ("admin", "a"), nodes)
    lines = block.splitlines()
    assert lines[0] == "authorization {" and lines[-1] == "}"
    assert lines[2] == '    {user: "admin", password: "a"}'
    assert lines[4].startswith('    {user: "n2", password: "p\\"2", permissions: ')
    for n, line in zip(nodes, lines[3:5], strict=True):
        assert f'"$KV.ikto-mesh.{n.key}"' in line and '"subscribe": {"allow": ["_INBOX.>"]}' in line
        other = next(o for o in nodes if o is not n)
        assert other.key not in line


def test_a_user_or_a_subnet_given_twice_is_refused() -> None:
    n1 = node_user("n1", "p", "198.19.11.0/24")
    with pytest.raises(ValueError, match="user 'n1' is given twice"):
        authorization("b", ("admin", "a"), [n1, node_user("n1", "q", "198.19.12.0/24")])
    with pytest.raises(ValueError, match="user 'admin' is given twice"):
        authorization("b", ("admin", "a"), [node_user("admin", "q", "198.19.12.0/24")])
    with pytest.raises(ValueError, match="share the subnet"):
        authorization("b", ("admin", "a"), [n1, node_user("n2", "q", "198.19.11.0/24")])


def test_cli_prints_the_block() -> None:
    r = ikto(
        "nats-permissions", "--bucket", "mesh-1", "--admin", "admin:A", "n1:P1:198.19.11.0/24", f"n2:P2:{V6}"
    )
    assert r.returncode == 0, r.stderr
    expected = authorization(
        "mesh-1", ("admin", "A"), [node_user("n1", "P1", "198.19.11.0/24"), node_user("n2", "P2", V6)]
    )
    assert r.stdout == expected and r.stderr == ""


def test_cli_help_teaches_the_node_format_and_an_example() -> None:
    r = ikto("nats-permissions", "--help")
    assert r.returncode == 0
    for needle in (
        "USER:PASSWORD:SUBNET",
        "--admin",
        "--bucket",
        "create_bucket",
        "ikto init --private-address",
    ):
        assert needle in r.stdout
    assert "ikto nats-permissions --admin admin:ADMIN-PW node1:PW1:198.19.11.0/24" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["n1:p:198.19.11.0/24"], "Missing option '--admin'"),
        (["--admin", "a:b"], "Missing argument 'NODE'"),
        (["--admin", "ab", "n1:p:198.19.11.0/24"], "admin 'ab': expected USER:PASSWORD"),
        (["--admin", "a:b", "n1-p-198.19.11.0/24"], "expected USER:PASSWORD:SUBNET"),
        (["--admin", "a:b", "n1:p:198.19.11.7/24"], "host bits set"),
        (["--admin", "a:b", "n1:p:198.19.11.0/24", "n1:q:198.19.12.0/24"], "given twice"),
        (["--admin", "a:b", "--bucket", "a.b", "n1:p:198.19.11.0/24"], "--bucket 'a.b'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    r = ikto("nats-permissions", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ikto: ") and needle in lines[0], r.stderr
    assert r.stdout == ""
