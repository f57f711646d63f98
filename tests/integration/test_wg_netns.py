"""ikto.wg and ikto.render against real wg-quick + wireguard-go in a throwaway network namespace.

Needs root. Each test gets its own namespace and its own interface name: wireguard-go's
control sockets live in /run/wireguard, which every namespace shares.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Interface, ip_address, ip_network
from pathlib import Path

import pytest

from ikto import files, keys, render
from ikto.config import Config
from ikto.models import Peer, PeerConfig, Plan, WgDevice
from ikto.reconcile import peer_config
from ikto.wg import Wg, WgError, default_source_address

pytestmark = pytest.mark.integration


@dataclass
class Node:
    wg: Wg
    config: Config
    private_key: str
    netns: str

    def write(self, peers: list[Peer]) -> Path:
        path = self.config.wg_config_path
        files.write_atomic(path, render.render(self.config.local_node(), self.private_key, peers))
        return path


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    tag = secrets.token_hex(3)
    netns, dev = f"ikto-t-{tag}", f"iktot{tag}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    key_path = tmp_path / "key"
    private_key, _ = keys.write_private_key(key_path)
    config = Config(
        name="node-a", advertise_address="198.18.0.1", private_address="fd10:a::",
        mesh_cidr="fd10::/16", subnet_prefix=48, wg_dev_name=dev, wg_port=51820,
        persistent_keepalive=25, mtu=None, private_key_path=key_path,
        config_dir=tmp_path / "wireguard",
    )
    try:
        yield Node(Wg(dev, netns=netns), config, private_key, netns)
    finally:
        # Deleting the link makes wireguard-go exit and remove its socket; a namespace
        # deleted first would stay alive as long as wireguard-go runs in it.
        subprocess.run(["ip", "-n", netns, "link", "del", "dev", dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        Path(f"/run/wireguard/{dev}.sock").unlink(missing_ok=True)


def mesh_peer(i: int, *, port: int = 51820) -> Peer:
    return Peer(
        name=f"peer-{i}",
        public_key=keys.public_key(keys.generate_private_key()),
        advertise_address=ip_address(f"198.18.0.{10 + i}"),
        allowed_ip=ip_network(f"fd10:{0x100 + i:x}::/48"),
        wg_port=port,
    )


def held(dev: WgDevice) -> dict[str, tuple[frozenset[str], str | None, int]]:
    """The configuration part of a dump (no counters), allowed IPs as a set."""
    return {
        k: (frozenset(p.allowed_ips), p.endpoint, p.persistent_keepalive)
        for k, p in dev.peers.items()
    }


def wanted(peers: list[Peer], keepalive: int = 25) -> dict[str, tuple[frozenset[str], str | None, int]]:
    return {p.public_key: (frozenset({str(p.allowed_ip)}), p.endpoint, keepalive) for p in peers}


def test_wg_quick_strip_accepts_the_rendered_file(node: Node) -> None:
    peers = [mesh_peer(1), mesh_peer(2)]
    path = node.write(peers)
    stripped = node.wg.run(["wg-quick", "strip", str(path)])
    # What wg-quick hands to `wg setconf` is exactly what render_wg produces.
    wg_text = render.render_wg(node.config.local_node(), node.private_key, peers)
    assert meaningful(stripped) == meaningful(wg_text)
    assert meaningful(stripped)[:3] == ["[Interface]", "ListenPort=51820", f"PrivateKey={node.private_key}"]


def meaningful(text: str) -> list[str]:
    return [ln.replace(" ", "") if "=" in ln else ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("#")]


def test_up_brings_the_rendered_config_up_on_wireguard_go(node: Node) -> None:
    peers = [mesh_peer(1), mesh_peer(2, port=51999)]
    assert node.wg.exists() is False
    node.wg.up(node.write(peers))
    assert node.wg.exists() is True
    assert node.config.interface_address in node.wg.addresses()
    dev = node.wg.dump()
    assert dev.public_key == keys.public_key(node.private_key)
    assert dev.listen_port == 51820
    assert held(dev) == wanted(peers)
    # wireguard-go, not a kernel interface, serves it.
    assert Path(f"/run/wireguard/{node.wg.dev}.sock").is_socket()
    node.wg.down(node.config.wg_config_path)
    assert node.wg.exists() is False


def test_syncconf_yields_exactly_the_new_peers(node: Node) -> None:
    old = [mesh_peer(1), mesh_peer(2), mesh_peer(3)]
    node.wg.up(node.write(old))
    moved = Peer(old[1].name, old[1].public_key, ip_address("198.18.0.99"), old[1].allowed_ip, 4000)
    new = [old[0], moved, mesh_peer(4)]
    node.wg.syncconf(render.render_wg(node.config.local_node(), node.private_key, new))
    assert held(node.wg.dump()) == wanted(new)
    node.wg.syncconf(render.render_wg(node.config.local_node(), node.private_key, []))
    assert node.wg.dump().peers == {}


def test_apply_adds_changes_removes_and_is_idempotent(node: Node) -> None:
    a, b, c = mesh_peer(1), mesh_peer(2), mesh_peer(3)
    node.wg.up(node.write([a, b]))
    changed_b = PeerConfig(b.public_key, ("fd10:102::/48", "fd10:202::/48"), "[2001:db8::2]:51821", 0)
    plan = Plan(set=(peer_config(c, 25), changed_b), remove=(a.public_key,))
    node.wg.apply(plan)
    after = held(node.wg.dump())
    assert after == {
        b.public_key: (frozenset({"fd10:102::/48", "fd10:202::/48"}), "[2001:db8::2]:51821", 0),
        c.public_key: (frozenset({str(c.allowed_ip)}), c.endpoint, 25),
    }
    node.wg.apply(plan)  # the same plan again changes nothing
    assert held(node.wg.dump()) == after
    node.wg.apply(Plan())
    assert held(node.wg.dump()) == after


def test_dump_round_trips_through_apply(node: Node) -> None:
    node.wg.up(node.write([mesh_peer(1), mesh_peer(2)]))
    before = node.wg.dump()
    node.wg.apply(Plan(set=tuple(
        PeerConfig(p.public_key, p.allowed_ips, p.endpoint or "", p.persistent_keepalive)
        for p in before.peers.values()
    )))
    after = node.wg.dump()
    assert held(after) == held(before)
    assert (after.public_key, after.listen_port, after.fwmark) == (
        before.public_key, before.listen_port, before.fwmark)


def test_configure_ensure_address_and_delete(node: Node) -> None:
    node.wg.up(node.write([]))
    assert node.config.private_key_path is not None
    node.wg.configure(51900, node.config.private_key_path)
    assert node.wg.dump().listen_port == 51900
    before = node.wg.addresses()
    node.wg.ensure_address(node.config.interface_address, 1380)  # already there: no change
    assert node.wg.addresses() == before
    extra = ip_network("fd10:b::/48")
    node.wg.ensure_address(IPv6Interface((extra.network_address, 16)), None)
    node.wg.ensure_address(IPv6Interface((extra.network_address, 16)), None)
    assert node.wg.addresses().count(IPv6Interface("fd10:b::/16")) == 1
    mtu = node.wg.run(["cat", f"/sys/class/net/{node.wg.dev}/mtu"]).strip()
    assert mtu == "1380"
    node.wg.delete()
    assert node.wg.exists() is False
    node.wg.delete()  # absent: no error


def test_errors_from_real_commands(node: Node) -> None:
    with pytest.raises(WgError) as ei:
        node.wg.dump()
    assert ei.value.exit_code == 1
    assert str(ei.value).startswith(f"ip netns exec {node.netns} wg show {node.wg.dev} dump: exited 1: ")
    assert "(the WireGuard interface does not exist; is the agent running?)" in str(ei.value)
    path = node.write([])
    node.wg.up(path)
    with pytest.raises(WgError) as ei:
        node.wg.up(path)
    assert "already exists" in str(ei.value) and "\n" not in str(ei.value)


def test_default_source_address_without_a_route_is_none(node: Node) -> None:
    assert default_source_address(netns=node.netns) is None
