"""Rendered configs against golden files. Regenerate with IKTO_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ikto import files, ipam, render
from ikto.config import Config
from ikto.models import Peer, PeerConfig
from ikto.reconcile import peer_config

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("IKTO_UPDATE_GOLDEN") == "1"

PRIVATE = "WDk0bWlnaHQtYmUtYS1rZXktYnV0LWl0LWlzLW5vdCE="
K1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
K2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
K3 = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="


@pytest.fixture(autouse=True)
def _no_ikto_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("IKTO_") and k != "IKTO_UPDATE_GOLDEN":
            monkeypatch.delenv(k)


def config(**fields: Any) -> Config:
    base: dict[str, Any] = dict(
        name="alpha", advertise_address="198.18.0.1", private_address="fd10:1::",
        mesh_cidr="fd10::/16", subnet_prefix=48, wg_dev_name="wg-ikto", wg_port=51820,
        nats_kv="ikto-mesh", persistent_keepalive=25, mtu=None,
    )
    base.update(fields)
    return Config(**base)


def peer(name: str, key: str, adv: str, subnet: str, port: int = 51820) -> Peer:
    return Peer(name=name, public_key=key, advertise_address=ip_address(adv),
                allowed_ip=ip_network(subnet), wg_port=port)


V6_PEERS = [
    peer("gamma", K2, "2001:db8:7::10", "fd10:c0de::/48", 51821),  # out of order on purpose
    peer("beta", K1, "198.18.0.2", "fd10:2::/48"),
]
V4_CONFIG = dict(private_address="10.42.7.0", mesh_cidr="10.42.0.0/16", subnet_prefix=24,
                 advertise_address="198.18.1.1", mtu=1380, persistent_keepalive=0, name="edge-1")
V4_PEERS = [
    peer("edge-3", K3, "198.18.1.3", "10.42.200.0/24"),
    peer("edge-2", K2, "198.18.1.2", "10.42.9.0/24"),
]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with IKTO_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "fields", "peers"),
    [
        ("ipv6-two-peers", {}, V6_PEERS),
        ("ipv4-mtu-no-keepalive", V4_CONFIG, V4_PEERS),
        ("zero-peers", {}, []),
    ],
)
def test_golden(name: str, fields: dict[str, Any], peers: list[Peer]) -> None:
    cfg = config(**fields)
    check_golden(f"{name}.conf", render.render(cfg.local_node(), PRIVATE, peers))
    check_golden(f"{name}.wg.conf", render.render_wg(cfg.local_node(), PRIVATE, peers))


def test_interface_address_carries_the_mesh_prefix_and_table_is_off() -> None:
    text = render.render(config().local_node(), PRIVATE, V6_PEERS)
    assert "Address = fd10:1::/16\n" in text
    assert "Table = off\n" in text
    assert "MTU" not in text
    assert "# inspect: wg show wg-ikto    or: ikto status" in text


def test_render_wg_has_no_wg_quick_only_keys() -> None:
    text = render.render_wg(config(**V4_CONFIG).local_node(), PRIVATE, V4_PEERS)
    keys = {ln.split("=", 1)[0].strip() for ln in text.splitlines() if "=" in ln and not ln.startswith("#")}
    assert keys == {"ListenPort", "PrivateKey", "PublicKey", "AllowedIPs", "Endpoint"}
    assert "[Interface]" in text and text.count("[Peer]") == 2


def test_peers_are_sorted_by_subnet_and_keepalive_omitted_when_zero() -> None:
    text = render.render(config(**V4_CONFIG).local_node(), PRIVATE, V4_PEERS)
    assert text.index("10.42.9.0/24") < text.index("10.42.200.0/24")
    assert "PersistentKeepalive" not in text


def test_a_name_cannot_break_the_file() -> None:
    evil = peer("x\n[Peer]\nPublicKey = evil\r", K1, "198.18.0.2", "fd10:2::/48")
    text = render.render(config().local_node(), PRIVATE, [evil])
    assert text.splitlines().count("[Peer]") == 1
    assert "PublicKey = evil" not in text.splitlines()
    assert "# x [Peer] PublicKey = evil  (fd10:2::/48)\n" in text
    assert "\r" not in text


def test_peer_config() -> None:
    p = V6_PEERS[0]
    assert peer_config(p, 25) == PeerConfig(
        public_key=K2, allowed_ips=("fd10:c0de::/48",), endpoint="[2001:db8:7::10]:51821",
        persistent_keepalive=25,
    )


def test_endpoints_and_subnets_match_the_models_formatting() -> None:
    rows = render._peer_rows(V6_PEERS + V4_PEERS)
    by_key = {r[1]: r for r in rows}
    for p in V6_PEERS:
        assert by_key[p.public_key][2:] == (str(p.allowed_ip), p.endpoint)


@given(st.integers(0, 2**128 - 1), st.sampled_from([0, 0xFFFF0000FFFF0000, 0xFFFF]))
def test_fast_address_text_equals_str(n: int, zero_mask: int) -> None:
    # Zero out some 16-bit groups so that the "::" compression cases are exercised.
    mask = 0
    for g in range(8):
        if (zero_mask >> (g * 8)) & 1 or (n >> (g * 16 + 7)) & 1:
            mask |= 0xFFFF << (g * 16)
    a = IPv6Address(n & ~mask)
    assert ipam.address_text(a) == str(a)


@pytest.mark.parametrize("text", ["::", "::1", "::ffff:1.2.3.4", "::1.2.3.4", "1::", "1:0:0:1::1",
                                  "1:0:1:0:1:0:1:0", "fd10::", "64:ff9b::c000:201", "192.0.2.1"])
def test_fast_address_text_edge_cases(text: str) -> None:
    a = ip_address(text)
    assert ipam.address_text(a) == str(a)


def test_write_config_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "wireguard" / "wg-ikto.conf"
    files.write_atomic(path, "x\n")
    files.write_atomic(path, "y\n")
    assert path.read_text() == "y\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["wg-ikto.conf"]
