"""The one model of a bucket value: written, read leniently (whose is it?), read strictly."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest
from badinputs import entry as raw

from ikto import entry, ipam
from ikto.models import Peer


def test_encode_round_trips_through_parse_and_owner() -> None:
    p = Peer("n1", str(raw()["public_key"]), ip_address("198.18.0.5"), ip_network("fd10:5::/48"), 51820)
    value = entry.encode(p)
    spec = entry.MeshSpec(ip_network("fd10::/16"), 48, "x", "peers.self")
    assert entry.parse(ipam.peer_key(p.allowed_ip), value, spec) == p
    assert entry.owner(value) == p.public_key
    assert set(json.loads(value)) == set(entry.REQUIRED)  # what ikto v0.3 reads, nothing it would trip on


@pytest.mark.parametrize(
    ("value", "owner", "described"),
    [
        (json.dumps({"name": "x", "public_key": "K"}).encode(), "K", "node x (public key K)"),
        (json.dumps({"public_key": 5}).encode(), None, "node ? (public key 5)"),
        (b"[1]", None, "an entry that is not valid JSON"),
        (b"{oops", None, "an entry that is not valid JSON"),
        (None, None, "an entry that is not valid JSON"),
    ],
)
def test_lenient_readings(value: bytes | None, owner: str | None, described: str) -> None:
    assert entry.owner(value) == owner
    assert entry.describe(value) == described


@pytest.mark.parametrize(
    ("new", "owner", "want"),
    [
        (None, "OLD", "nothing"),  # no rotation under way
        ("NEW", "NEW", "commit"),  # our entry already has the new key: finish
        ("NEW", "OLD", "abandon"),  # it never got it: forget the new key
        ("NEW", None, "abandon"),  # no entry at all: the claim will write one with the old key
        ("NEW", "STRANGER", "abandon"),  # someone else's: keep the old key; the claim moves us
    ],
)
def test_what_a_restart_does_with_an_unfinished_rotation(new, owner, want):
    from ikto.rotation import decide

    assert decide(new, owner, "OLD") == want
