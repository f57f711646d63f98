"""Every rejected-entry rule, v0.3 entries, conflicts, and the reconciler's properties."""

import json
from ipaddress import ip_network

import pytest
from badinputs import BAD_VALUES, entry
from hypothesis import given, settings
from hypothesis import strategies as st

from ikto import ipam, keys
from ikto.entry import MeshSpec
from ikto.entry import parse as parse_entry
from ikto.mesh import Mesh
from ikto.models import PeerWant, WgPeer
from ikto.reconcile import applied, diff, peer_config, want

MESH = ip_network("fd10::/16")
SELF_PUB = keys.public_key(keys.generate_private_key())
SELF_NET = ip_network("fd10:ffff:1::/48")
SPEC = MeshSpec(MESH, 48, SELF_PUB, ipam.peer_key(SELF_NET))


def pub() -> str:
    return keys.public_key(keys.generate_private_key())


def put(e, key=None):
    k = key or ipam.peer_key(ip_network(e["allowed_ip"]))
    return k, json.dumps(e).encode()


def test_valid_v03_entry_accepted():
    k, v = put(entry())
    p = parse_entry(k, v, SPEC)
    assert p.name == "node2" and str(p.allowed_ip) == "fd10:1:2::/48" and p.endpoint == "198.18.0.12:51820"


def test_extra_fields_are_fine_and_ipv6_endpoint_bracketed():
    k, v = put(entry(advertise_address="2001:db8::5", extra="x", ikto={"v": 1}))
    assert parse_entry(k, v, SPEC).endpoint == "[2001:db8::5]:51820"


def test_pre_v03_private_cidr_field_accepted():
    e = entry()
    e["private_cidr"] = e.pop("allowed_ip")
    k, _ = put({**e, "allowed_ip": e["private_cidr"]})
    assert parse_entry(k, json.dumps(e).encode(), SPEC).allowed_ip == ip_network("fd10:1:2::/48")


KEY = ipam.peer_key(ip_network("fd10:1:2::/48"))
BAD = BAD_VALUES


@pytest.mark.parametrize(("value", "reason"), BAD)
def test_rejected_entries(value, reason):
    m = Mesh(SPEC)
    _, rej = m.put(KEY, value, 7)
    assert rej is not None and reason in rej.reason, rej
    assert not m.peers()
    # logged once: the same rejection again is not reported a second time
    assert m.put(KEY, value, 8)[1] is None


@pytest.mark.parametrize(
    ("net", "key", "reason"),
    [
        ("fd11:1:2::/48", None, "outside the mesh"),
        ("10.0.0.0/24", None, "outside the mesh"),
        ("fd10:1::/32", None, "not a /48"),
        ("fd10:1:2::1/48", None, "not a network"),
        ("fd10:1:2::/48", ipam.peer_key(ip_network("fd10:1:3::/48")), "key does not match"),
        ("fd10:1:2:0::/48", "peers.ZmQxMDoxOjI6MDo6LzQ4", "key does not match"),
    ],
)
def test_address_rules(net, key, reason):
    e = entry(net)
    k = key or ipam.peer_key(ip_network(net, strict=False))
    _, rej = Mesh(SPEC).put(k, json.dumps(e).encode(), 3)
    assert rej is not None and reason in rej.reason


def test_ourselves_and_our_key_elsewhere_and_our_address_stolen():
    m = Mesh(SPEC)
    _, rej = m.put(SPEC.self_key, json.dumps(entry(str(SELF_NET), public_key=SELF_PUB)).encode(), 1)
    assert rej is None and m.peers() == []  # ourselves: valid, but never a peer
    _, rej = m.put(*put(entry(public_key=SELF_PUB)), 2)
    assert rej is not None and "our public key" in rej.reason
    _, rej = m.put(SPEC.self_key, json.dumps(entry(str(SELF_NET))).encode(), 3)
    assert rej is not None and "claims our address" in rej.reason


def test_duplicate_public_key_earliest_revision_wins():
    m = Mesh(SPEC)
    k = pub()
    a = entry("fd10:1:1::/48", public_key=k, name="first")
    b = entry("fd10:1:2::/48", public_key=k, name="second")
    m.put(*put(a), 10)
    touched, _ = m.put(*put(b), 20)
    assert touched == {k}
    assert m.winner(k).name == "first" and len(m.peers()) == 1
    assert list(m.losers()) == [ipam.peer_key(ip_network("fd10:1:2::/48"))]
    assert m.delete(ipam.peer_key(ip_network("fd10:1:1::/48"))) == {k}
    assert m.winner(k).name == "second"


def test_update_changing_key_touches_old_and_new():
    m = Mesh(SPEC)
    k1, k2 = pub(), pub()
    m.put(*put(entry(public_key=k1)), 1)
    touched, _ = m.put(*put(entry(public_key=k2)), 2)
    assert touched == {k1, k2}
    assert m.winner(k1) is None and m.winner(k2) is not None


def test_a_bad_update_removes_the_previous_good_value():
    m = Mesh(SPEC)
    k1 = pub()
    m.put(*put(entry(public_key=k1)), 1)
    touched, rej = m.put(KEY, b"garbage", 2)
    assert touched == {k1} and rej is not None and m.winner(k1) is None


# Reconciler properties

nets = st.integers(min_value=1, max_value=200).map(lambda i: f"fd10:{i:x}::/48")
pubkeys = st.sampled_from([pub() for _ in range(12)])
events = st.lists(
    st.tuples(st.booleans(), nets, pubkeys, st.sampled_from(["198.18.0.2", "198.18.0.3"])), max_size=40
)


def wanted_of(m: Mesh):
    return {p.public_key: want(p, 25) for p in m.peers()}


@settings(max_examples=200, deadline=None)
@given(events)
def test_reconcile_converges_is_idempotent_and_allowed_ips_never_overlap(evs):
    m = Mesh(SPEC)
    observed: dict[str, WgPeer] = {}
    for rev, (is_put, net, k, adv) in enumerate(evs, start=1):
        key = ipam.peer_key(ip_network(net))
        touched = m.put(key, json.dumps(entry(net, public_key=k, advertise_address=adv)).encode(), rev)[0] \
            if is_put else m.delete(key)
        # incremental: only touched keys are compared
        applied(diff(wanted_of(m), observed, touched), observed)
    wanted = wanted_of(m)
    assert {k: (v.allowed_ips, v.endpoint) for k, v in observed.items()} == {
        k: (v.config.allowed_ips, v.config.endpoint) for k, v in wanted.items() if v.config
    }
    assert not diff(wanted, observed)  # applying twice changes nothing
    ips = [ip for p in observed.values() for ip in p.allowed_ips]
    assert len(ips) == len(set(ips))


def test_diff_removes_unknown_and_leaves_matching_alone():
    p = parse_entry(*put(entry()), SPEC)
    pc = peer_config(p, 25)
    same = WgPeer(pc.public_key, pc.endpoint, pc.allowed_ips, 123, 5, 6, 25)
    stranger = WgPeer(pub(), None, ("fd10:9::/48",), 0, 0, 0, 0)
    plan = diff({pc.public_key: PeerWant(p.name, pc)}, {pc.public_key: same, stranger.public_key: stranger})
    assert plan.set == () and plan.remove == (stranger.public_key,)
    moved = WgPeer(pc.public_key, "198.18.0.99:51820", pc.allowed_ips, 1, 1, 1, 25)
    assert diff({pc.public_key: PeerWant(p.name, pc)}, {pc.public_key: moved}).set == (pc,)


def test_heartbeat_with_same_value_touches_nothing_and_keeps_first_revision():
    m = Mesh(SPEC)
    k = pub()
    a = entry("fd10:1:1::/48", public_key=k, name="first")
    b = entry("fd10:1:2::/48", public_key=k, name="second")
    m.put(*put(a), 10)
    m.put(*put(b), 20)
    assert m.put(*put(a), 30) == (set(), None)  # a heartbeat: nothing to re-check
    assert m.winner(k).name == "first" and m.revision_of(put(a)[0]) == 10
    ka = put(a)[0]
    m.set_expired({ka})
    assert m.winner(k).name == "second"
    assert m.put(*put(a), 40)[0] == {k}  # it spoke again: re-check it
    assert m.winner(k).name == "first"
