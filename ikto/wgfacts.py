"""Facts: what `wg show dump`, `ip -j link` and `ip -j addr` print, parsed into typed values.

Pure: no command runs here (wg.py runs them). Tested from captured output.
"""

from __future__ import annotations

import json
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_interface,
    ip_network,
)

from ikto.models import Link, WgDevice, WgPeer


def _int(field: str) -> int:
    return 0 if field in ("off", "(none)", "") else int(field, 0)


def parse_dump(text: str) -> WgDevice:
    """Parse `wg show <dev> dump`: the interface line, then one line per peer."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty `wg show dump` output")
    iface = lines[0].split("\t")
    if len(iface) != 4:
        raise ValueError(f"unexpected interface line in `wg show dump`: {len(iface)} fields")
    _private, public, port, fwmark = iface  # the private key is dropped on purpose
    peers: dict[str, WgPeer] = {}
    for ln in lines[1:]:
        f = ln.split("\t")
        if len(f) != 8:
            raise ValueError(f"unexpected peer line in `wg show dump`: {len(f)} fields")
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = f
        peers[key] = WgPeer(
            public_key=key,
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=() if allowed == "(none)" else tuple(allowed.split(",")),
            latest_handshake=_int(handshake),
            rx_bytes=_int(rx),
            tx_bytes=_int(tx),
            persistent_keepalive=_int(keepalive),
        )
    return WgDevice(
        public_key="" if public == "(none)" else public,
        listen_port=_int(port),
        fwmark=_int(fwmark),
        peers=peers,
    )


def parse_ip_link(json_text: str, dev: str) -> Link | None:
    """Parse `ip -j link show dev DEV`: the link's state, or None if it is not listed."""
    for link in json.loads(json_text) if json_text.strip() else []:
        if link.get("ifname") == dev:
            return Link(dev, "UP" in link.get("flags", ()), int(link.get("mtu", 0)))
    return None


def parse_ip_addr(json_text: str) -> list[IPv4Interface | IPv6Interface]:
    """Parse `ip -j addr show`: every address of every listed link."""
    if not json_text.strip():
        return []
    out: list[IPv4Interface | IPv6Interface] = []
    for link in json.loads(json_text):
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6") and "local" in a:
                out.append(ip_interface(f"{a['local']}/{a['prefixlen']}"))
    return out


def parse_host_addresses(json_text: str, skip: tuple[str, ...] = ()) -> list[IPv4Interface | IPv6Interface]:
    """Parse `ip -j addr show`: the global-scope addresses of every link not in `skip`."""
    out: list[IPv4Interface | IPv6Interface] = []
    for link in json.loads(json_text) if json_text.strip() else []:
        if link.get("ifname") in skip:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6") and "local" in a and a.get("scope", "global") == "global":
                out.append(ip_interface(f"{a['local']}/{a['prefixlen']}"))
    return out


def parse_routes(json_text: str, version: int) -> list[IPv4Network | IPv6Network]:
    """Parse `ip -j -<version> route show dev DEV`: the routes we added, not the kernel's own
    (the mesh's connected route, fe80::/64); `default` is 0.0.0.0/0 or ::/0."""
    out: list[IPv4Network | IPv6Network] = []
    for r in json.loads(json_text) if json_text.strip() else []:
        if r.get("protocol") == "kernel" or r.get("type", "unicast") != "unicast":
            continue
        dst = r.get("dst", "")
        if dst == "default":
            dst = "0.0.0.0/0" if version == 4 else "::/0"
        try:
            out.append(ip_network(dst, strict=False))
        except ValueError:
            continue
    return out
