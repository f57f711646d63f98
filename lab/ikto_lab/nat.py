"""NAT routers for lab nodes: a node behind its own home router, as a host on a real LAN is.

A NATed node's netns is not on the underlay bridge. Between them sits a router netns
(`<lab>-<node>.nat`, so `down` finds it with the lab's other namespaces, also after a crash):

    hub bridge --vr<i>-- [wan 198.18.64.0+i/16 | router | lan 198.18.192.4i+1/30] --veth-- eth0 node (.4i+2)

The node's default route goes through the router, so NATS (on the underlay) sees the router's
WAN address. The router forwards LAN→WAN with `MASQUERADE` (port-preserving while the source
port is unique: plain iptables, most home routers) or `MASQUERADE --random-fully` (a new port
per destination: symmetric), and its firewall lets in from the WAN only what answers a flow
from inside: unsolicited packets are dropped, not refused — a router whose own INPUT accepts
them creates tracking entries that make hole punching fail for reasons unrelated to ikto
(docs/facts.md, "WireGuard endpoints and NAT"). No hairpin NAT. A node's LAN address is in the
underlay's range but on no underlay link: sent to from outside, it goes nowhere, like a private
address on the internet.

The plans (addresses, names, commands) are pure and unit-tested; build(), restart() and
flush() run them through the lab's runner.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from ikto_lab import netns
from ikto_lab.shell import LabUsageError, run

MODES: dict[str, tuple[str, ...]] = {
    "preserve": (),  # plain MASQUERADE keeps the source port while it is unique
    "random": ("--random-fully",),  # a new random port per destination: symmetric NAT
}
WAN_BASE = IPv4Address("198.18.64.0")  # routers' public addresses: 198.18.64.0-198.18.95.255
WAN_GENERATIONS = 8  # a router's address changes among WAN_BASE + 4096 * generation + index
LAN_BASE = IPv4Address("198.18.192.0")  # one /30 per router: 198.18.192.0-198.18.255.255
LAN_PREFIX = 30
MAX_INDEX = 4095
UNDERLAY_PREFIX = 16
WAN_IF = "wan"
LAN_IF = "lan"


def parse_mode(text: str) -> str:
    """A NAT mode as the user wrote it, checked."""
    if text not in MODES:
        raise LabUsageError(f"unknown NAT mode {text!r}: use one of {', '.join(MODES)}")
    return text


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`--nat node3=preserve --nat node4=random` as {node: mode}."""
    out: dict[str, str] = {}
    for item in items:
        node, sep, mode = item.partition("=")
        if not sep or not node:
            raise LabUsageError(f"--nat {item!r}: expected NODE=MODE, e.g. node3=preserve")
        if node in out:
            raise LabUsageError(f"--nat: {node} given twice")
        out[node] = parse_mode(mode)
    return out


def router_netns(lab: str, node: str) -> str:
    """The router's netns: under the lab's prefix, and no node's name (names have no dots)."""
    return f"{lab}-{node}.nat"


@dataclass(frozen=True)
class Router:
    """The router in front of one node: where it is and how it translates."""

    lab: str
    node: str
    index: int  # the node's index in the lab
    mode: str
    generation: int = 0  # bumped each time its WAN address changes

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_INDEX:
            raise LabUsageError(f"node index {self.index}: a NATed node needs one from 1 to {MAX_INDEX}")
        parse_mode(self.mode)

    @property
    def netns(self) -> str:
        return router_netns(self.lab, self.node)

    @property
    def node_netns(self) -> str:
        return f"{self.lab}-{self.node}"

    @property
    def hub(self) -> str:
        return f"{self.lab}-hub"

    @property
    def hub_port(self) -> str:
        return f"vr{self.index}"

    @property
    def wan(self) -> str:
        """The router's public address (what NATS and open peers see)."""
        return str(WAN_BASE + 4096 * (self.generation % WAN_GENERATIONS) + self.index)

    @property
    def gateway(self) -> str:
        """The router's LAN address, the node's default gateway."""
        return str(LAN_BASE + 4 * self.index + 1)

    @property
    def address(self) -> str:
        """The node's own (private) address on the LAN."""
        return str(LAN_BASE + 4 * self.index + 2)

    def next_wan(self) -> Router:
        """The same router after its public address changed."""
        return replace(self, generation=self.generation + 1)


def _in(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def nat_commands(r: Router) -> list[list[str]]:
    """(Re)write the router's translation: one MASQUERADE rule on its WAN side."""
    return [
        _in(r.netns, ["iptables", "-t", "nat", "-F", "POSTROUTING"]),
        _in(r.netns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", WAN_IF, "-j", "MASQUERADE",
                      *MODES[r.mode]]),
    ]  # fmt: skip


def firewall_commands(r: Router) -> list[list[str]]:
    """A home router's firewall: from the WAN only what answers a flow from inside (and ping)."""
    established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    return [
        _in(r.netns, ["iptables", "-A", "INPUT", "-i", WAN_IF, *established]),
        _in(r.netns, ["iptables", "-A", "INPUT", "-i", WAN_IF, "-p", "icmp", "--icmp-type", "echo-request",
                      "-j", "ACCEPT"]),
        _in(r.netns, ["iptables", "-A", "INPUT", "-i", WAN_IF, "-j", "DROP"]),
        _in(r.netns, ["iptables", "-A", "FORWARD", "-i", WAN_IF, *established]),
        _in(r.netns, ["iptables", "-A", "FORWARD", "-i", WAN_IF, "-j", "DROP"]),
    ]  # fmt: skip


def build_commands(r: Router) -> list[list[str]]:
    """Everything after both netns exist: the WAN leg on the hub's bridge, the LAN to the node,
    the node's default route, forwarding, translation and firewall."""
    rn, nn = r.netns, r.node_netns
    return [
        ["ip", "-n", r.hub, "link", "add", r.hub_port, "type", "veth", "peer", "name", WAN_IF, "netns", rn],
        ["ip", "-n", r.hub, "link", "set", r.hub_port, "master", netns.BRIDGE, "up"],
        ["ip", "-n", rn, "addr", "add", f"{r.wan}/{UNDERLAY_PREFIX}", "dev", WAN_IF],
        ["ip", "-n", rn, "link", "set", WAN_IF, "up"],
        ["ip", "-n", rn, "link", "add", LAN_IF, "type", "veth", "peer", "name", "eth0", "netns", nn],
        ["ip", "-n", rn, "addr", "add", f"{r.gateway}/{LAN_PREFIX}", "dev", LAN_IF],
        ["ip", "-n", rn, "link", "set", LAN_IF, "up"],
        ["ip", "-n", nn, "addr", "add", f"{r.address}/{LAN_PREFIX}", "dev", "eth0"],
        ["ip", "-n", nn, "link", "set", "eth0", "up"],
        ["ip", "-n", nn, "route", "add", "default", "via", r.gateway],
        _in(rn, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        *nat_commands(r),
        *firewall_commands(r),
    ]  # fmt: skip


def flush_commands(r: Router, *, conntrack: bool) -> list[list[str]]:
    """Forget every translation, as a rebooted router does: `conntrack -F`, or without that tool,
    removing and re-adding the WAN address (the kernel drops the flows masqueraded to it)."""
    if conntrack:
        return [_in(r.netns, ["conntrack", "-F"])]
    return readdress_commands(r, r)


def readdress_commands(old: Router, new: Router) -> list[list[str]]:
    """Move the router's WAN leg from old's address to new's (flows through the old one die)."""
    return [
        ["ip", "-n", old.netns, "addr", "del", f"{old.wan}/{UNDERLAY_PREFIX}", "dev", WAN_IF],
        ["ip", "-n", new.netns, "addr", "add", f"{new.wan}/{UNDERLAY_PREFIX}", "dev", WAN_IF],
    ]


def restart_commands(r: Router, *, new_wan: bool, conntrack: bool) -> tuple[Router, list[list[str]]]:
    """A router restart: a new WAN address if asked, translation rules rewritten, every flow
    forgotten. The router after it, and the commands."""
    after = r.next_wan() if new_wan else r
    cmds = readdress_commands(r, after) if new_wan else []
    return after, [*cmds, *nat_commands(after), *flush_commands(after, conntrack=conntrack)]


def _run_all(cmds: Iterable[Sequence[str]]) -> None:
    for argv in cmds:
        run(argv)


def has_conntrack() -> bool:
    """Is the conntrack tool installed (`apt-get install conntrack`)?"""
    return shutil.which("conntrack", path="/usr/sbin:/sbin:/usr/bin:/bin") is not None


def build(r: Router) -> None:
    """Create the router's netns and wire it between the hub and the node's netns (which exists)."""
    netns.add(r.netns)
    _run_all(build_commands(r))


def restart(r: Router, *, new_wan: bool = False) -> Router:
    """Restart the router: every flow forgotten (and a new WAN address if new_wan); the router now."""
    after, cmds = restart_commands(r, new_wan=new_wan, conntrack=has_conntrack())
    _run_all(cmds)
    return after


def flows(r: Router) -> str:
    """The router's UDP flows (`conntrack -L -p udp`), for a look when a test fails."""
    if not has_conntrack():
        return "(conntrack not installed)"
    return run(_in(r.netns, ["conntrack", "-L", "-p", "udp"]), check=False).stdout
