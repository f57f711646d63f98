"""Vitals: signs of life from WireGuard (on our monotonic clock), records read on demand (on the
server's), what to read and when, and the decisions; with a fake clock, no sleeping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import ip_network

from badinputs import entry
from fakes import FakeClock

from ikto import ipam, keys
from ikto.entry import MeshSpec
from ikto.liveness import Evidence, Policy, State, cadence
from ikto.mesh import Mesh
from ikto.models import WgDevice, WgPeer
from ikto.vitals import Vitals

P = Policy(stale_after=45, remove_after=600, reclaim_after=3600)
SELF = ipam.peer_key(ip_network("fd10:ffff::/48"))
KEEPALIVE, LOOK = 5, 5.0
V03 = cadence(keeps_alive=False, keepalive=KEEPALIVE, look_interval=LOOK)  # answers rekeys only
RHYTHM = V03 - LOOK  # how often such a peer is heard


def world(n: int = 3, **extra: object) -> tuple[Vitals, Mesh, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    mesh = Mesh(MeshSpec(ip_network("fd10::/16"), 48, "me" * 22, SELF))
    peers = []
    for i in range(1, n + 1):
        pk = keys.public_key(keys.generate_private_key())
        net = f"fd10:{i}::/48"
        key = ipam.peer_key(ip_network(net))
        when = datetime.fromtimestamp(clock.server() - 5000, UTC)  # written long ago
        mesh.put(key, json.dumps(entry(net, public_key=pk, **extra)).encode(), i, when)
        peers.append((key, pk))
    return Vitals(P, lambda: mesh, clock, 10.0, KEEPALIVE, lambda: LOOK, "A" * 44), mesh, clock, peers


def dump(rx: dict[str, int], hs: dict[str, int] | None = None) -> WgDevice:
    return WgDevice("me", 51820, 0, {
        pk: WgPeer(pk, "198.18.0.9:51820", (), (hs or {}).get(pk, 0), b, 0, 25) for pk, b in rx.items()
    })


def test_growing_counters_are_signs_of_life_measured_to_the_last_look() -> None:
    v, _, clock, peers = world()
    (k1, p1), (k2, p2), _ = peers
    v.observe(dump({p1: 100, p2: 100}))
    clock.advance(30)
    v.observe(dump({p1: 200, p2: 100}))  # p1 sent something, p2 did not
    clock.advance(50)  # no look since: p1 must not look silent for 50 s
    assert v.signs(k1).handshake == 0.0 and v.verdict(k1, True).state == State.OK
    assert v.signs(k2).handshake is None  # never a sign from p2 (its handshake is 0)
    assert v.verdict(k2, True).state == State.STALE  # its entry is old, nothing else says it lives
    assert v.verdict(k1, True).evidence == Evidence.HANDSHAKE


def test_a_skewed_wall_clock_does_not_age_the_data_plane() -> None:
    v, _, clock, peers = world(1)
    (k, p) = peers[0]
    v.observe(dump({p: 1}, {p: int(clock.wall()) - 600}))  # wireguard-go's clock 10 min behind ours
    assert v.signs(k).handshake == 600.0 - V03  # quiet past the cadence of a v0.3 peer
    clock.advance(10)
    v.observe(dump({p: 2}, {p: int(clock.wall()) - 600}))  # more bytes: a sign, on our clock
    assert v.signs(k).handshake == 0.0 and v.session_fresh(p)


def test_records_are_read_only_for_peers_without_free_evidence_and_less_often_when_dead() -> None:
    v, _, clock, peers = world(3, endpoints=[])
    (_, p1), (k2, _), (k3, _) = peers
    v.observe(dump({p1: 1}))
    clock.advance(5)
    v.observe(dump({p1: 2}))
    probe = v.review().probe
    assert {k for k, _ in probe} == {k2, k3}
    assert all(speaks for _, speaks in probe)  # ikto nodes: read their alive.<id>
    v.recorded(k2, datetime.fromtimestamp(clock.server() - 2, UTC))  # k2 wrote 2 s ago: alive
    v.recorded(k3, None)  # k3 has no presence record
    assert v.verdict(k2, True).state == State.OK and v.verdict(k2, True).evidence == Evidence.PRESENCE
    assert v.review().probe == []  # both were just read
    clock.advance(11)
    assert {k for k, _ in v.review().probe} == {k2}  # alive lately: read every heartbeat
    clock.advance(500)
    assert k3 in {k for k, _ in v.review().probe}  # silent for 5,000 s: read every ~500 s


def test_v03_peers_are_read_from_witness_records() -> None:
    v, _, clock, peers = world(1)  # no endpoints field: v0.3 entries
    k, _ = peers[0]
    assert v.review().probe == [(k, False)]
    v.recorded(k, datetime.fromtimestamp(clock.server() - 1, UTC))
    assert v.verdict(k, False).evidence == Evidence.WITNESS


def test_presence_is_needed_when_a_live_ikto_peer_loses_our_data_plane() -> None:
    v, _, clock, peers = world(2, endpoints=[])
    (_, p1), (k2, p2) = peers
    v.observe(dump({p1: 1, p2: 1}))
    assert not v.review().presence_needed  # just met them
    for i in range(4):
        clock.advance(10)
        v.observe(dump({p1: 2 + i, p2: 1}))  # p2 silent on the data plane
    assert not v.review().presence_needed  # nothing says p2 is alive: no one to write for
    v.recorded(k2, datetime.fromtimestamp(clock.server() - 1, UTC))  # but it writes presence
    assert v.review().presence_needed


def test_expire_and_come_back() -> None:
    v, mesh, clock, peers = world(4)
    v.restart_grace()
    (k1, p1), *_ = peers
    alive = {pk: 1 for _, pk in peers[1:]}
    v.observe(dump({p1: 1, **alive}))
    for i in range(70):  # p1 silent past remove_after; the others keep sending
        clock.advance(10)
        v.observe(dump({p1: 1, **{pk: 2 + i for pk in alive}}))
    assert v.expire() == {p1} and k1 in mesh.expired
    assert v.verdict(k1, False).state == State.EXPIRED
    v.restart_grace()  # a reconnect of ours is not a sign of life of p1
    assert v.expire() == set() and k1 in mesh.expired
    v.recorded(k1, datetime.fromtimestamp(clock.server() - 1, UTC))  # a witness saw it
    assert v.expire() == {p1} and k1 not in mesh.expired


def test_a_late_look_does_not_make_a_live_peer_unreachable() -> None:
    v, _, clock, peers = world(1)  # v0.3-style peers: heard at every rekey (RHYTHM), no keepalives
    (_, p) = peers[0]
    v.observe(dump({p: 100}))
    clock.advance(LOOK)
    v.observe(dump({p: 132}))  # heard at once
    clock.advance(RHYTHM + LOOK + 7)  # the next look comes late (a busy host): 7 s past its time
    v.observe(dump({p: 132}))  # it answered just after the last look: not seen yet
    assert not v.past_rhythm(p)
    for _ in range(2):  # looks on time again, and still nothing: quiet past its rhythm
        clock.advance(LOOK)
        v.observe(dump({p: 132}))
    assert v.past_rhythm(p)


def test_the_dump_time_not_the_time_it_reached_us_is_the_look() -> None:
    v, _, clock, peers = world(1)
    (_, p) = peers[0]
    v.observe(dump({p: 100}))
    clock.advance(LOOK)
    taken = (clock.mono(), clock.wall())
    clock.advance(10)  # the dump waited before it was handed over
    v.observe(dump({p: 132}), taken)
    assert v.handshake_age(p) == 10.0  # the bytes came before the dump was read, not after


def test_counters_reset_by_a_re_add_then_growing_are_a_sign() -> None:
    v, _, clock, peers = world(1)
    (k, p) = peers[0]
    v.observe(dump({p: 10_000}))
    clock.advance(60)
    v.observe(dump({p: 0}))  # removed and added again: counters start over, no sign yet
    assert v.signs(k).handshake is None or v.signs(k).handshake >= 60 - V03
    clock.advance(5)
    v.observe(dump({p: 92}))  # fewer bytes than before the re-add, but new ones
    assert v.signs(k).handshake == 0.0
