"""One node's value in the bucket (ikto v0.3's JSON object): written, read strictly, read leniently.

`parse` is the strict reading the mesh uses: every rule an entry must pass before WireGuard
sees it. `owner` and `describe` are the lenient readings for deciding whose a key is (claim,
heartbeat, leave): a holder whose value is not even JSON still counts as somebody else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from ikto import ipam, keys
from ikto.ipam import Network
from ikto.models import Peer, endpoint_text
from ikto.routes import MAX_ROUTES

MAX_VALUE_BYTES = 4096
"""A v0.3 entry is ~200 bytes of JSON; 4 KiB leaves room for new fields and stops a writer
from storing megabytes under one key (it is also the bucket's max_value_size)."""

REQUIRED = ("name", "public_key", "advertise_address", "allowed_ip", "wg_port")
MAX_ENDPOINTS = 8


class EntryError(ValueError):
    """Why a bucket entry was rejected (one line)."""


@dataclass(frozen=True, slots=True)
class MeshSpec:
    """What every entry is checked against: the mesh, its subnet size, and who we are."""

    cidr: Network
    prefix: int
    self_public_key: str
    self_key: str  # our own bucket key


def encode(peer: Peer) -> bytes:
    """The bytes stored under a node's key."""
    return json.dumps(peer.to_entry()).encode()


def _object(value: bytes | None) -> dict[str, object] | None:
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def string_field(value: bytes | None, name: str) -> str | None:
    """A string field of a JSON object value (an entry, or a record beside the entries); None
    if the value is not such an object or the field is not a string."""
    data = _object(value)
    got = data.get(name) if data is not None else None
    return got if isinstance(got, str) else None


def owner(value: bytes | None) -> str | None:
    """The public key a value claims, if it is a JSON object with a string public_key."""
    return string_field(value, "public_key")


def describe(value: bytes | None) -> str:
    """Who holds a key, for messages: `node NAME (public key KEY)`."""
    data = _object(value)
    if data is None:
        return "an entry that is not valid JSON"
    return f"node {data.get('name', '?')} (public key {data.get('public_key', '?')})"


def _is_printable(s: str) -> bool:
    return all(32 <= ord(c) != 127 for c in s)


def parse(key: str, value: bytes, spec: MeshSpec) -> Peer:
    """Validate one bucket entry on its own; raise EntryError with the reason."""
    if len(value) > MAX_VALUE_BYTES:
        raise EntryError(f"value is {len(value)} bytes (limit {MAX_VALUE_BYTES})")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryError("value is not UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EntryError(f"value is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise EntryError(f"value is a JSON {type(data).__name__}, not an object")
    if "allowed_ip" not in data and "private_cidr" in data:  # pre-v0.3 name of the field
        data["allowed_ip"] = data["private_cidr"]
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        raise EntryError(f"missing field(s): {', '.join(missing)}")
    for f in ("name", "public_key", "advertise_address", "allowed_ip"):
        if not isinstance(data[f], str):
            raise EntryError(f"{f} is a {type(data[f]).__name__}, not a string")
    port = data["wg_port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise EntryError(f"wg_port is a {type(port).__name__}, not an integer")
    if not 1 <= port <= 65535:
        raise EntryError(f"wg_port {port} is out of range 1-65535")

    name = data["name"]
    if len(name) > 64 or not _is_printable(name):
        raise EntryError("name has control characters or is longer than 64 characters")

    if not keys.is_valid_public_key(data["public_key"]):
        raise EntryError("public_key is not a 32-byte base64 key (or is all zeros)")
    public_key = data["public_key"]

    try:
        allowed = ip_network(data["allowed_ip"], strict=True)
    except ValueError:
        raise EntryError(f"allowed_ip {data['allowed_ip']!r} is not a network in CIDR form") from None
    # Integer compare, not subnet_of(): that fills cached properties on every network
    # object (2 MiB at 10k peers) and is slow.
    mesh = spec.cidr
    shift = mesh.max_prefixlen - mesh.prefixlen
    if (
        allowed.version != mesh.version
        or allowed.prefixlen < mesh.prefixlen
        or int(allowed.network_address) >> shift != int(mesh.network_address) >> shift
    ):
        raise EntryError(f"allowed_ip {allowed} is outside the mesh {spec.cidr}")
    if allowed.prefixlen != spec.prefix:
        raise EntryError(f"allowed_ip {allowed} is not a /{spec.prefix} (the mesh's subnet size)")
    if key != ipam.peer_key(allowed):
        raise EntryError(f"key does not match allowed_ip {allowed} (expected {ipam.peer_key(allowed)})")

    try:
        adv = ip_address(data["advertise_address"])
    except ValueError:
        raise EntryError(f"advertise_address {data['advertise_address']!r} is not an IP address") from None
    reason = ipam.unusable_endpoint_reason(adv)
    if reason:
        raise EntryError(f"advertise_address {adv} is {reason}")
    if adv.version == mesh.version and int(adv) >> shift == int(mesh.network_address) >> shift:
        raise EntryError(f"advertise_address {adv} is inside the mesh")

    if public_key == spec.self_public_key and key != spec.self_key:
        raise EntryError("uses our public key")
    if key == spec.self_key and public_key != spec.self_public_key:
        raise EntryError("claims our address with another public key")
    endpoints = _endpoints(data["endpoints"], spec) if "endpoints" in data else None
    routed = _routes(data.get("routes", []))
    exit_ = data.get("exit", False)
    if not isinstance(exit_, bool):
        raise EntryError(f"exit is a {type(exit_).__name__}, not true or false")
    return Peer(name, public_key, adv, allowed, port, endpoints, routed, exit_)


def _routes(value: object) -> tuple[Network, ...]:
    """The optional routed networks: at most MAX_ROUTES networks in CIDR form."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EntryError("routes is not a list of strings")
    if len(value) > MAX_ROUTES:
        raise EntryError(f"routes lists {len(value)} networks (at most {MAX_ROUTES})")
    try:
        return tuple(ip_network(v, strict=True) for v in value)
    except ValueError as e:
        raise EntryError(f"routes: {e}") from None


def _endpoints(value: object, spec: MeshSpec) -> tuple[str, ...]:
    """The optional candidate endpoints: at most MAX_ENDPOINTS usable `host:port` texts."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EntryError("endpoints is not a list of strings")
    if len(value) > MAX_ENDPOINTS:
        raise EntryError(f"endpoints lists {len(value)} candidates (at most {MAX_ENDPOINTS})")
    out = []
    for text in value:
        try:
            address, port = ipam.parse_endpoint(text)
        except ValueError as e:
            raise EntryError(f"endpoints: {e}") from None
        reason = ipam.unusable_endpoint_reason(address)
        if reason or address in spec.cidr:
            raise EntryError(f"endpoints: {text} is {reason or 'inside the mesh'}")
        out.append(endpoint_text(address, port))
    return tuple(out)
