"""Hostile or broken bucket values, each with the reason the agent must give for skipping it.

Every value is meant for the key of fd10:1:2::/48 in the fd10::/16 mesh with /48 subnets.
"""

from __future__ import annotations

import json

from ikto import keys


def entry(net: str = "fd10:1:2::/48", **over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "name": "node2",
        "public_key": over.pop("public_key", None) or keys.public_key(keys.generate_private_key()),
        "advertise_address": "198.18.0.12",
        "allowed_ip": net,
        "wg_port": 51820,
    }
    e.update(over)
    return e


def _j(**over: object) -> bytes:
    return json.dumps(entry(**over)).encode()


BAD_VALUES: list[tuple[bytes, str]] = [
    (b"{not json", "not JSON"),
    (b"[1,2]", "not an object"),
    (b'"str"', "not an object"),
    (b"null", "not an object"),
    (b"\xff\xfe", "not UTF-8"),
    (b"x" * (1 << 20), "bytes (limit"),
    (json.dumps({"name": "a"}).encode(), "missing field"),
    (_j(wg_port="51820"), "wg_port is a str"),
    (_j(wg_port=True), "wg_port is a bool"),
    (_j(wg_port=0), "out of range"),
    (_j(wg_port=65536), "out of range"),
    (_j(name=5), "name is a int"),
    (_j(name="evil\nname"), "control characters"),
    (_j(name="bell\x07"), "control characters"),
    (_j(public_key="abc"), "public_key"),
    (_j(public_key=keys.encode_key(bytes(32))), "all zeros"),
    (_j(advertise_address="127.0.0.1"), "loopback"),
    (_j(advertise_address="::1"), "loopback"),
    (_j(advertise_address="224.0.0.1"), "multicast"),
    (_j(advertise_address="ff02::1"), "multicast"),
    (_j(advertise_address="0.0.0.0"), "unspecified"),
    (_j(advertise_address="::"), "unspecified"),
    (_j(advertise_address="255.255.255.255"), "broadcast"),
    (_j(advertise_address="::ffff:198.18.0.1"), "IPv4-mapped"),
    (_j(advertise_address="fd10:9::1"), "inside the mesh"),
    (_j(advertise_address="nope"), "not an IP address"),
    (_j(allowed_ip="fd11:1:2::/48"), "outside the mesh"),
    (_j(allowed_ip="10.0.0.0/24"), "outside the mesh"),
    (_j(allowed_ip="::ffff:10.0.0.0/120"), "outside the mesh"),
    (_j(allowed_ip="fd10:1::/32"), "not a /48"),
    (_j(allowed_ip="fd10:1:2::1/48"), "not a network"),
    (_j(allowed_ip="fd10:1:3::/48"), "key does not match"),
]
