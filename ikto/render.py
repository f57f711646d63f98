"""The WireGuard config: the wg-quick file an operator reads, and wg(8) text for syncconf."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import jinja2

import ikto
from ikto import ipam
from ikto.models import LocalNode, Peer

TEMPLATE = "wg-quick.conf.j2"

# Names are validated before they get here; this only keeps a bad one from breaking a line.
_CONTROL = {c: " " for c in (*range(32), 127)}


def _templates_dir() -> Path:
    """`ikto/templates` in a wheel, else the repository's top-level `templates/`."""
    here = Path(ikto.__file__).parent
    for d in (here / "templates", here.parent / "templates"):
        if (d / TEMPLATE).is_file():
            return d
    raise FileNotFoundError(f"{TEMPLATE} not found in {here / 'templates'} or {here.parent / 'templates'}")


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE)


def _peer_rows(peers: Iterable[Peer]) -> list[tuple[str, str, str, str]]:
    """(comment, public key, allowed IPs, endpoint) per peer, sorted by subnet."""
    # Sort on ints: comparing ipaddress objects is ~10x slower.
    keyed = [
        ((p.allowed_ip.version, int(p.allowed_ip.network_address), p.allowed_ip.prefixlen), p)
        for p in peers
    ]
    keyed.sort(key=lambda kp: kp[0])
    rows = []
    for _, p in keyed:
        net_text = ipam.network_text(p.allowed_ip)
        adv = p.advertise_address
        host = ipam.address_text(adv)
        endpoint = f"[{host}]:{p.wg_port}" if adv.version == 6 else f"{host}:{p.wg_port}"
        rows.append((f"{p.name.translate(_CONTROL)} ({net_text})", p.public_key, net_text, endpoint))
    return rows


def _render(node: LocalNode, private_key: str, peers: Iterable[Peer], *, quick: bool) -> str:
    return _template().render(
        quick=quick,
        name=node.name.translate(_CONTROL),
        mesh=str(node.mesh),
        bucket=node.bucket,
        dev=node.dev,
        address=str(node.address) if quick else "",
        port=node.port,
        mtu=node.mtu,
        private_key=private_key.strip(),
        keepalive=node.keepalive,
        peers=_peer_rows(peers),
    )


def render(node: LocalNode, private_key: str, peers: Iterable[Peer]) -> str:
    """The wg-quick file (Address, MTU, Table = off, one [Peer] per node sorted by subnet)."""
    return _render(node, private_key, peers, quick=True)


def render_wg(node: LocalNode, private_key: str, peers: Iterable[Peer]) -> str:
    """The same peers in wg(8) format, for `wg syncconf` (no wg-quick-only keys)."""
    return _render(node, private_key, peers, quick=False)
