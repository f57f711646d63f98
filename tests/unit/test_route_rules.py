"""The rules for routed networks (ikto/routes.py): pure, no bucket, no OS."""

from __future__ import annotations

from ipaddress import ip_network as net
from pathlib import Path

import pytest

from ikto.routes import (
    Announced,
    decide,
    family_problems,
    forwarding_problems,
    host_warnings,
    own_problems,
    route_key,
)

MESH = net("fd10::/16")


def ann(cidr: str, holder: str, *, reserved: bool = True, revision: int = 1, exit: bool = False) -> Announced:
    return Announced(net(cidr), holder, exit, reserved, revision)


def test_route_key_is_base64url_of_the_network() -> None:
    assert route_key(net("192.168.50.0/24")) == "routes.MTkyLjE2OC41MC4wLzI0"
    assert "/" not in route_key(net("fd99:1::/64"))


@pytest.mark.parametrize(
    ("routes", "exit_node", "needle"),
    [
        (["fd10:1::/64"], False, "overlaps the mesh"),
        (["0.0.0.0/0"], False, "default route"),
        (["10.0.0.0/8", "10.1.0.0/16"], False, "also in routes"),
    ],
)
def test_our_own_bad_routes(routes: list[str], exit_node: bool, needle: str) -> None:
    problems = own_problems([net(r) for r in routes], MESH, exit_node)
    assert len(problems) == 1 and needle in problems[0]


def test_an_exit_node_may_route_the_default() -> None:
    assert own_problems([net("0.0.0.0/0"), net("::/0")], MESH, True) == []


def test_a_reserved_network_is_applied_to_its_holder_only() -> None:
    d = decide(
        [ann("fd99:1::/64", "peers.A"), ann("fd99:1::/64", "peers.B", reserved=False)], MESH, [], "peers.ME"
    )
    assert d.applied == {"peers.A": (net("fd99:1::/64"),)}
    assert "not reserved" in d.refused[("peers.B", net("fd99:1::/64"))]


def test_overlapping_reservations_the_earliest_wins() -> None:
    d = decide(
        [ann("10.0.0.0/8", "peers.B", revision=9), ann("10.1.0.0/16", "peers.A", revision=3)],
        MESH,
        [],
        "peers.ME",
    )
    assert d.applied == {"peers.A": (net("10.1.0.0/16"),)}
    assert "announced first" in d.refused[("peers.B", net("10.0.0.0/8"))]


@pytest.mark.parametrize(
    ("a", "ours", "needle"),
    [
        (ann("fd10:7::/64", "peers.A"), [], "overlaps the mesh"),
        (ann("0.0.0.0/0", "peers.A"), [], "not an exit node"),
        (ann("192.168.1.0/24", "peers.A"), [net("192.168.0.0/16")], "this node routes"),
    ],
)
def test_refused_announcements(a: Announced, ours: list, needle: str) -> None:
    d = decide([a], MESH, ours, "peers.ME")
    assert d.applied == {} and needle in d.refused[(a.holder_key, a.net)]


def test_our_own_announcement_is_neither_applied_nor_refused() -> None:
    d = decide([ann("fd99:1::/64", "peers.ME")], MESH, [net("fd99:1::/64")], "peers.ME")
    assert d.applied == {} and d.refused == {}


def test_an_exit_node_default_routes_are_applied_though_they_hold_the_mesh() -> None:
    d = decide(
        [ann("0.0.0.0/0", "peers.A", exit=True), ann("::/0", "peers.A", exit=True)], MESH, [], "peers.ME"
    )
    assert d.applied == {"peers.A": (net("0.0.0.0/0"), net("::/0"))}


def _proc(tmp_path: Path, v4: str, v6: str) -> Path:
    (tmp_path / "ipv4").mkdir()
    (tmp_path / "ipv6" / "conf" / "all").mkdir(parents=True)
    (tmp_path / "ipv4" / "ip_forward").write_text(v4 + "\n")
    (tmp_path / "ipv6" / "conf" / "all" / "forwarding").write_text(v6 + "\n")
    return tmp_path


def test_forwarding_off_is_reported_for_the_families_we_route(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0", "1")
    assert forwarding_problems([], proc) == []
    assert forwarding_problems([net("fd99::/48")], proc) == []
    got = forwarding_problems([net("10.1.0.0/24")], proc)
    assert len(got) == 1 and "sysctl -w net.ipv4.ip_forward=1" in got[0]


def test_a_network_of_the_other_family_than_the_mesh_is_warned_about(tmp_path: Path) -> None:
    assert family_problems([net("fd99:1::/64")], MESH) == []
    got = family_problems([net("192.168.50.0/24")], MESH)
    assert len(got) == 1 and "192.168.50.0/24 is IPv4 but the mesh fd10::/16 is IPv6" in got[0]
    assert family_problems([net("192.168.50.0/24")], net("10.99.0.0/16")) == []
    both = host_warnings([net("192.168.50.0/24")], MESH, _proc(tmp_path, "0", "1"))
    assert len(both) == 2


def test_a_v03_style_reader_accepts_an_entry_that_routes_networks() -> None:
    """ikto v0.3 unmarshals an entry into its five fields and ignores the rest: the lab's v0.3
    node reads entries that way (ikto_lab.legacy), and still takes this one as a peer."""
    import json
    from ipaddress import ip_address

    from ikto import entry, ipam
    from ikto.models import Peer
    from ikto_lab import legacy

    pk = "Q" * 43 + "="
    p = Peer("site-a", pk, ip_address("198.18.0.5"), net("fd10:5::/48"), 51820,
             ("198.18.0.5:51820",), (net("fd99:1::/64"), net("0.0.0.0/0")), True)  # fmt: skip
    value = json.loads(entry.encode(p))
    assert {"routes", "exit", "endpoints"} <= value.keys()
    args = legacy.peer_args({ipam.peer_key(p.allowed_ip): {"value": value}}, "peers.other", set())
    assert args == ["peer", pk, "allowed-ips", "fd10:5::/48", "endpoint", "198.18.0.5:51820"]
