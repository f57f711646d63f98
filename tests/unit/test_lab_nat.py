"""The NAT lab's plans: router addresses, names, the commands that build and restart a router,
`--nat` parsing, and nodes set up as ikto v0.3 does (ikto_lab.nat, ikto_lab.legacy)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest
from typer.testing import CliRunner

from ikto import ipam
from ikto_lab import legacy
from ikto_lab.cli import lab_app
from ikto_lab.lab import NODE_NAME_RE, UNDERLAY
from ikto_lab.nat import (
    MAX_INDEX,
    Router,
    build_commands,
    parse_assignments,
    restart_commands,
    router_netns,
)
from ikto_lab.shell import LabUsageError
from ikto_lab.state import LabState, NodeState

LAB_RANGE = ip_network("198.18.0.0/15")
UNDERLAY_NET = ip_network("198.18.0.0/16")


def in_router(argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", "lab-node3.nat", *argv]


def test_nat_assignments_parse() -> None:
    assert parse_assignments(["node3=preserve", "node4=random"]) == {"node3": "preserve", "node4": "random"}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["node3"], "expected NODE=MODE"),
        (["=random"], "expected NODE=MODE"),
        (["node3=full-cone"], "unknown NAT mode 'full-cone'"),
        (["node3=random", "node3=preserve"], "node3 given twice"),
    ],
)
def test_bad_nat_assignments_say_what_is_wrong(items: list[str], says: str) -> None:
    with pytest.raises(LabUsageError, match=says):
        parse_assignments(items)


def test_router_addresses() -> None:
    r = Router("lab", "node3", 3, "preserve")
    assert (r.wan, r.gateway, r.address) == ("198.18.64.3", "198.18.192.13", "198.18.192.14")
    assert (r.netns, r.node_netns, r.hub, r.hub_port) == ("lab-node3.nat", "lab-node3", "lab-hub", "vr3")
    moved = r.next_wan()
    assert (moved.wan, moved.address, moved.generation) == ("198.18.80.3", r.address, 1)


def test_router_addresses_never_collide_and_stay_in_the_lab_range() -> None:
    nodes = {str(UNDERLAY + 10 + i) for i in range(1, 246)} | {str(UNDERLAY + i) for i in range(1, 10)}
    seen: set[str] = set()
    for index in (1, 2, 3, 255, 256, 1000, MAX_INDEX):
        for gen in range(8):
            r = Router("lab", f"n{index}", index, "random", gen)
            for a in (r.wan, r.gateway, r.address):
                assert ip_address(a) in LAB_RANGE
            assert ip_address(r.wan) in UNDERLAY_NET  # on the underlay's link
            mine = {r.wan} if gen else {r.wan, r.gateway, r.address}
            assert not mine & seen, f"index {index} generation {gen} reuses {mine & seen}"
            assert not mine & nodes
            seen |= mine


def test_router_index_must_fit() -> None:
    with pytest.raises(LabUsageError, match="from 1 to"):
        Router("lab", "n", MAX_INDEX + 1, "preserve")
    with pytest.raises(LabUsageError, match="unknown NAT mode"):
        Router("lab", "n", 1, "cone")


def test_router_netns_is_the_labs_and_no_nodes() -> None:
    # `down` removes every netns named `<lab>-*`: routers too, also after a crash.
    ns = router_netns("ikto-nat", "node3")
    assert ns.startswith("ikto-nat-")
    node_part = ns.removeprefix("ikto-nat-")
    assert not NODE_NAME_RE.match(node_part), "a node could have the router's netns name"


def test_build_a_port_preserving_router() -> None:
    cmds = build_commands(Router("lab", "node3", 3, "preserve"))
    assert cmds[:10] == [
        ["ip", "-n", "lab-hub", "link", "add", "vr3", "type", "veth", "peer", "name", "wan", "netns",
         "lab-node3.nat"],
        ["ip", "-n", "lab-hub", "link", "set", "vr3", "master", "br0", "up"],
        ["ip", "-n", "lab-node3.nat", "addr", "add", "198.18.64.3/16", "dev", "wan"],
        ["ip", "-n", "lab-node3.nat", "link", "set", "wan", "up"],
        ["ip", "-n", "lab-node3.nat", "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns",
         "lab-node3"],
        ["ip", "-n", "lab-node3.nat", "addr", "add", "198.18.192.13/30", "dev", "lan"],
        ["ip", "-n", "lab-node3.nat", "link", "set", "lan", "up"],
        ["ip", "-n", "lab-node3", "addr", "add", "198.18.192.14/30", "dev", "eth0"],
        ["ip", "-n", "lab-node3", "link", "set", "eth0", "up"],
        ["ip", "-n", "lab-node3", "route", "add", "default", "via", "198.18.192.13"],
    ]  # fmt: skip
    assert cmds[10:] == [
        in_router(["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        in_router(["iptables", "-t", "nat", "-F", "POSTROUTING"]),
        in_router(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]),
        in_router(["iptables", "-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate",
                   "ESTABLISHED,RELATED", "-j", "ACCEPT"]),
        in_router(["iptables", "-A", "INPUT", "-i", "wan", "-p", "icmp", "--icmp-type", "echo-request", "-j",
                   "ACCEPT"]),
        in_router(["iptables", "-A", "INPUT", "-i", "wan", "-j", "DROP"]),
        in_router(["iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate",
                   "ESTABLISHED,RELATED", "-j", "ACCEPT"]),
        in_router(["iptables", "-A", "FORWARD", "-i", "wan", "-j", "DROP"]),
    ]  # fmt: skip


def test_a_symmetric_router_randomises_ports() -> None:
    cmds = build_commands(Router("lab", "node3", 3, "random"))
    masq = [c for c in cmds if "MASQUERADE" in c]
    assert masq == [in_router(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE",
                               "--random-fully"])]  # fmt: skip


def test_restart_forgets_every_flow() -> None:
    r = Router("lab", "node3", 3, "preserve")
    after, cmds = restart_commands(r, new_wan=False, conntrack=True)
    assert after == r
    assert cmds == [
        in_router(["iptables", "-t", "nat", "-F", "POSTROUTING"]),
        in_router(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]),
        in_router(["conntrack", "-F"]),
    ]


def test_restart_with_a_new_wan_address() -> None:
    r = Router("lab", "node3", 3, "random", generation=1)
    after, cmds = restart_commands(r, new_wan=True, conntrack=True)
    assert after.generation == 2 and after.wan == "198.18.96.3"
    assert cmds[:2] == [
        ["ip", "-n", "lab-node3.nat", "addr", "del", "198.18.80.3/16", "dev", "wan"],
        ["ip", "-n", "lab-node3.nat", "addr", "add", "198.18.96.3/16", "dev", "wan"],
    ]
    assert cmds[-1] == in_router(["conntrack", "-F"])


def test_restart_without_the_conntrack_tool_readdresses() -> None:
    # Removing the WAN address makes the kernel drop every flow masqueraded to it.
    r = Router("lab", "node3", 3, "preserve")
    _, cmds = restart_commands(r, new_wan=False, conntrack=False)
    assert cmds[-2:] == [
        ["ip", "-n", "lab-node3.nat", "addr", "del", "198.18.64.3/16", "dev", "wan"],
        ["ip", "-n", "lab-node3.nat", "addr", "add", "198.18.64.3/16", "dev", "wan"],
    ]


def test_lab_state_keeps_nat_and_reads_files_from_before_it() -> None:
    st = LabState("lab", False, "198.19.0.0/16", 24, ["198.18.0.1"])
    st.nodes["node3"] = NodeState("node3", 3, "198.18.192.14", nat="random", wan_generation=2)
    st.nodes["old"] = NodeState("old", 4, "198.18.0.14", v03=True)
    assert LabState.from_json(st.to_json()) == st
    raw = json.loads(st.to_json())
    for n in raw["nodes"].values():
        for f in ("nat", "wan_generation", "v03"):
            n.pop(f)
    old = LabState.from_json(json.dumps(raw))
    assert old.nodes["node3"].nat is None and old.nodes["old"].v03 is False


def test_cli_refuses_a_bad_nat_before_touching_anything(tmp_path: object) -> None:
    res = CliRunner().invoke(lab_app, ["up", "--nat", "node3=cone", "--state-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "unknown NAT mode 'cone'" in res.output


CONFIG = {
    "name": "old1", "advertise_address": "198.18.0.15", "private_address": "198.19.7.0",
    "subnet_prefix": 24, "mesh_cidr": "198.19.0.0/16", "wg_port": 51820, "wg_dev_name": "wg-ikto",
}  # fmt: skip
KEY_A = "6xvKYnyJqASTpURkIXpUvH/QG2Iakd3B2BxZyfafSF8="
KEY_B = "Y6ezXGrWwQShN0ZsEiJS9W8cowKgu2ywWHiyUWn1mE4="
KEY_GONE = "wvQnBDfUGVKTed2a47qVnGbmfGoGCC59N/NUJU1vqyU="


def test_v03_entry_has_exactly_v03s_fields() -> None:
    key, value = legacy.entry(CONFIG, KEY_A)
    assert key == ipam.peer_key(ip_network("198.19.7.0/24"))
    assert json.loads(value) == {
        "name": "old1", "public_key": KEY_A, "advertise_address": "198.18.0.15",
        "allowed_ip": "198.19.7.0/24", "wg_port": 51820,
    }  # fmt: skip


def test_v03_interface() -> None:
    assert legacy.interface_commands(CONFIG) == [
        ["wg", "set", "wg-ikto", "listen-port", "51820", "private-key", "/etc/ikto/private.key"],
        ["ip", "addr", "add", "198.19.7.0/16", "dev", "wg-ikto"],
        ["ip", "link", "set", "wg-ikto", "up"],
    ]


def test_v03_peers_are_the_buckets_entries_without_keepalive() -> None:
    own, _ = legacy.entry(CONFIG, KEY_A)
    dump = {
        own: {"value": json.loads(legacy.entry(CONFIG, KEY_A)[1])},
        "peers.b": {"value": {"name": "b", "public_key": KEY_B, "advertise_address": "198.18.192.14",
                              "allowed_ip": "198.19.9.0/24", "wg_port": 51821,
                              "endpoints": ["198.18.64.3:51821"]}},
        "peers.bad": {"value": "not json"},
        "peers.partial": {"value": {"name": "p", "public_key": KEY_GONE}},
    }  # fmt: skip
    args = legacy.peer_args(dump, own, {KEY_B, KEY_GONE})
    assert args == [
        "peer", KEY_B, "allowed-ips", "198.19.9.0/24", "endpoint", "198.18.192.14:51821",
        "peer", KEY_GONE, "remove",
    ]  # fmt: skip
    assert "persistent-keepalive" not in args
