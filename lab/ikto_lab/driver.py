"""The lab-driver interface the end-to-end suite is written against ("one suite, two labs").

A driver only has to provide nodes, exec and agent/NATS lifecycle; convergence, pings
and observation are implemented here once, on top of exec, so every lab checks the same
things the same way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

from ikto.ipam import Address
from ikto.models import WgDevice
from ikto.wgfacts import parse_dump as parse_wg_dump
from ikto.wgfacts import parse_ip_addr
from ikto_lab.shell import LabError

DEV = "wg-ikto"
CONFIG_PATH = "/etc/ikto/ikto.json"
KEY_PATH = "/etc/ikto/private.key"
_SEP = "@@ikto-lab@@"
LAN_NETNS = "ikto-lan"  # add_lan's host, a network namespace inside the node
LAN_LINK = "ikto-lan0"  # the node's side of the LAN
REMOVE_LAN = f"ip netns del {LAN_NETNS} 2>/dev/null; ip link del {LAN_LINK} 2>/dev/null; true"
# One exec per node per look: the device, its addresses and the node's config.
_OBSERVE = (
    f"wg show {DEV} dump; echo {_SEP}; ip -j addr show dev {DEV} 2>/dev/null; "
    f"echo {_SEP}; cat {CONFIG_PATH} 2>/dev/null"
)


class ConvergenceTimeout(LabError):
    """The mesh did not converge in time; the message lists what was still wrong."""


@dataclass(frozen=True)
class NodeView:
    """What one look at a node shows: its WireGuard device, mesh address and config."""

    device: WgDevice | None
    address: Address | None
    config: dict[str, Any]

    @property
    def endpoint(self) -> str | None:
        """Where peers should send to: advertise_address:wg_port from the node's config."""
        adv = self.config.get("advertise_address")
        return f"{adv}:{self.config.get('wg_port', 51820)}" if adv else None


def parse_view(text: str) -> NodeView:
    """Parse the output of the observe script."""
    parts = text.split(_SEP)
    dump, addrs, conf = ([*parts, "", "", ""])[:3]
    try:
        device: WgDevice | None = parse_wg_dump(dump)
    except ValueError:
        device = None
    try:
        ifaces = [i for i in parse_ip_addr(addrs.strip()) if not i.is_link_local]
    except json.JSONDecodeError:
        ifaces = []
    try:
        config = json.loads(conf) if conf.strip() else {}
    except json.JSONDecodeError:
        config = {}
    return NodeView(device, ifaces[0].ip if ifaces else None, config)


class LabDriver(ABC):
    """A lab of ikto nodes the end-to-end suite can drive."""

    @abstractmethod
    def up(self, nodes: int = 3) -> None:
        """Create the lab with NATS and `nodes` nodes, agents started (refuses if one exists)."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything the lab made, even after a crash; idempotent."""

    @abstractmethod
    def nodes(self) -> list[str]:
        """Every node, member or not."""

    @abstractmethod
    def members(self) -> list[str]:
        """Nodes that joined the mesh and have not left it."""

    @abstractmethod
    def exec(
        self, node: str, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on node (as root, ikto on PATH) and capture its output."""

    @abstractmethod
    def add_node(self, name: str, *, private_address: str | None = None, start: bool = True) -> str:
        """Create a node with a fresh config (private_address forces its address) and start it."""

    @abstractmethod
    def start_agent(self, node: str) -> None:
        """Start node's agent and wait until it serves its admin socket."""

    @abstractmethod
    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send sig to node's agent and wait for it to exit; its exit code if known."""

    @abstractmethod
    def agent_running(self, node: str) -> bool:
        """True while node's agent process is alive."""

    @abstractmethod
    def leave_node(self, node: str, *, down: bool = False, timeout: float = 15.0) -> int | None:
        """`ikto leave` on node, then wait for its agent to exit; its exit code if known."""

    @abstractmethod
    def log_tail(self, node: str, lines: int = 30) -> str:
        """The last lines of node's agent log."""

    @abstractmethod
    def stop_nats(self) -> None:
        """Stop every NATS server (their JetStream store is kept)."""

    @abstractmethod
    def start_nats(self, timeout: float = 30.0) -> None:
        """Start the NATS servers again and wait until they are healthy."""

    # Implemented once for every lab, on top of the methods above.

    def kill_agent(self, node: str) -> None:
        """SIGKILL node's agent (its interface and bucket entry stay)."""
        self.stop_agent(node, signal.SIGKILL)

    def restart_nats(self, downtime: float = 0.0) -> None:
        """Stop NATS, wait downtime seconds, start it again."""
        self.stop_nats()
        time.sleep(downtime)
        self.start_nats()

    def observe(self, node: str) -> NodeView:
        """One look at node's device, mesh address and config."""
        return parse_view(self.exec(node, ["sh", "-c", _OBSERVE], timeout=20).stdout)

    def mesh_address(self, node: str) -> Address:
        """node's address on the mesh interface; LabError if it has none."""
        addr = self.observe(node).address
        if addr is None:
            raise LabError(f"{node} has no address on {DEV}")
        return addr

    def wg_device(self, node: str) -> WgDevice:
        """node's `wg show wg-ikto dump`; LabError if the device is missing."""
        cp = self.exec(node, ["wg", "show", DEV, "dump"], check=True)
        return parse_wg_dump(cp.stdout)

    def convergence_problems(self) -> list[str]:
        """What still keeps the mesh from matching the membership (empty when converged)."""
        members = self.members()
        views = {n: self.observe(n) for n in members}
        problems: list[str] = []
        for n, v in views.items():
            if v.device is None:
                problems.append(f"{n}: no {DEV} device")
            elif v.address is None:
                problems.append(f"{n}: no address on {DEV}")
        if problems:
            return problems
        for a in members:
            if not self.agent_running(a):
                continue  # a stopped agent's device is frozen: only check the others
            dev = views[a].device
            assert dev is not None
            want = {views[b].device.public_key: b for b in members if b != a}  # type: ignore[union-attr]
            for key in dev.peers.keys() - want.keys():
                problems.append(f"{a}: unexpected peer {key[:8]}…")
            for key, b in want.items():
                peer = dev.peers.get(key)
                if peer is None:
                    problems.append(f"{a}: missing peer {b}")
                    continue
                addr = views[b].address
                if not any(addr in ip_network(net) for net in peer.allowed_ips):
                    problems.append(f"{a}: peer {b} allowed-ips {peer.allowed_ips} lack {addr}")
                if not self.endpoint_ok(b, peer.endpoint, views[b]):
                    problems.append(f"{a}: peer {b} endpoint {peer.endpoint} != {views[b].endpoint}")
        return problems

    def endpoint_ok(self, node: str, endpoint: str | None, view: NodeView) -> bool:
        """Is `endpoint` where peers should send to reach node? Its advertised endpoint; a lab
        with NAT routers accepts the addresses the router maps the node to."""
        return endpoint == view.endpoint

    def wait_converged(self, timeout: float = 30.0) -> float:
        """Wait until every running member's peers are exactly the other members; seconds taken."""
        start = time.monotonic()
        while True:
            problems = self.convergence_problems()
            if not problems:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise ConvergenceTimeout(
                    f"mesh not converged after {timeout:g} s: " + "; ".join(problems)
                )
            time.sleep(0.2)

    def ping_once(self, src: str, dst: Address, wait: float = 1.0) -> bool:
        """One echo request from src to a mesh address; True if answered within wait seconds."""
        cp = self.exec(src, ["ping", "-n", "-q", "-c", "1", "-W", f"{wait:g}", str(dst)])
        return cp.returncode == 0

    def ping(self, src: str, dst: str, timeout: float = 10.0) -> bool:
        """Ping dst's mesh address from src until it answers or timeout passes."""
        addr = self.mesh_address(dst)
        deadline = time.monotonic() + timeout
        while True:
            if self.ping_once(src, addr):
                return True
            if time.monotonic() > deadline:
                return False

    def agent_status(self, node: str) -> dict[str, Any]:
        """`ikto status --json` on node: its health, peers with their liveness, rejected entries."""
        cp = self.exec(node, ["ikto", "status", "--json"], check=True, timeout=20)
        data: dict[str, Any] = json.loads(cp.stdout)
        return data

    # A LAN behind a node (routed networks). Built with exec alone, so every lab has it.

    def add_lan(self, node: str, network: str) -> str:
        """Put a LAN behind node: one host, in a network namespace of its own inside the node,
        on `network` (its first address is the node's, the second the host's), whose default
        route is the node. The host's address. The node forwards only once told to (sysctl)."""
        net = ip_network(network)
        gw, host = net[1], net[2]
        nodad = " nodad" if net.version == 6 else ""
        script = "\n".join(
            [
                "set -e",
                f"ip netns add {LAN_NETNS}",
                f"ip link add {LAN_LINK} type veth peer name eth0 netns {LAN_NETNS}",
                f"ip addr add {gw}/{net.prefixlen} dev {LAN_LINK}{nodad}",
                f"ip link set {LAN_LINK} up",
                f"ip -n {LAN_NETNS} link set lo up",
                f"ip -n {LAN_NETNS} addr add {host}/{net.prefixlen} dev eth0{nodad}",
                f"ip -n {LAN_NETNS} link set eth0 up",
                f"ip -n {LAN_NETNS} -{net.version} route add default via {gw}",
            ]
        )
        self.exec(node, ["sh", "-c", script], check=True)
        return str(host)

    def remove_lan(self, node: str) -> None:
        """Remove the LAN add_lan put behind node (idempotent)."""
        self.exec(node, ["sh", "-c", REMOVE_LAN])

    def reach(self, src: str, address: str, timeout: float = 10.0) -> bool:
        """Ping any address from src until it answers or timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            cp = self.exec(src, ["ping", "-n", "-q", "-c", "1", "-W", "1", address])
            if cp.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False
