"""Endpoints: a working session keeps what WireGuard learned; otherwise candidates are tried
5 s each, and rounds that all fail back off (no flapping)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from fakes import FakeClock

from ikto.models import Peer, PeerWant, WgDevice, WgPeer
from ikto.paths import MAX_WAIT, TRY_SECONDS, Paths, Sighting, our_candidates
from ikto.reconcile import applied, diff, want

PK = "P" * 43 + "="
NATED = Peer("n", PK, ip_address("192.168.1.5"), ip_network("fd10:5::/48"), 51820,
             ("203.0.113.7:51820", "198.18.9.9:51820"))


def dev(endpoint: str | None, handshake: int = 0, rx: int = 0) -> WgDevice:
    return WgDevice("me", 51820, 0, {PK: WgPeer(PK, endpoint, ("fd10:5::/48",), handshake, rx, 0, 25)})


def setup(fresh: set[str]) -> tuple[Paths, FakeClock]:
    clock = FakeClock()
    return Paths(clock.mono, lambda pk: pk in fresh), clock


def test_a_working_session_keeps_the_learned_endpoint() -> None:
    fresh = {PK}
    paths, _ = setup(fresh)
    paths.observed(dev("198.51.100.77:40001", handshake=1), [NATED])
    endpoint, keep, readd = paths.want(NATED)
    assert keep and not readd and endpoint == "198.51.100.77:40001"
    assert paths.describe(PK) == "direct"


def test_without_a_session_candidates_are_tried_in_turn_then_back_off() -> None:
    paths, clock = setup(set())
    assert paths.observed(dev("192.168.1.5:51820"), [NATED]) == set()  # first: the advertised one
    assert paths.want(NATED) == ("192.168.1.5:51820", False, True) and paths.trying
    seen = [paths.want(NATED)[0]]
    for _ in range(2):
        clock.advance(TRY_SECONDS)
        assert paths.observed(dev(seen[-1]), [NATED]) == {PK}  # moved on: must be applied
        seen.append(paths.want(NATED)[0])
    assert seen == ["192.168.1.5:51820", "203.0.113.7:51820", "198.18.9.9:51820"]
    assert paths.describe(PK) == "trying 3/3"
    clock.advance(TRY_SECONDS)
    paths.observed(dev(seen[-1]), [NATED])  # a round failed: wait, at the first candidate
    assert not paths.trying and paths.want(NATED)[0] == "192.168.1.5:51820"
    assert paths.describe(PK).startswith("no direct path (1 rounds")
    clock.advance(TRY_SECONDS)  # still waiting: nothing moves (no flapping)
    assert paths.observed(dev("192.168.1.5:51820"), [NATED]) == set()
    clock.advance(2 * TRY_SECONDS)
    paths.observed(dev("192.168.1.5:51820"), [NATED])
    assert paths.trying  # the next round
    assert min(TRY_SECONDS * 2**20, MAX_WAIT) == MAX_WAIT


def test_once_a_candidate_works_it_sticks_and_is_tried_first_next_time() -> None:
    fresh: set[str] = set()
    paths, clock = setup(fresh)
    paths.observed(dev("192.168.1.5:51820"), [NATED])
    clock.advance(TRY_SECONDS)
    paths.observed(dev("192.168.1.5:51820"), [NATED])
    fresh.add(PK)  # the handshake came, on the second candidate
    paths.observed(dev("203.0.113.7:51820", handshake=1), [NATED])
    assert paths.want(NATED) == ("203.0.113.7:51820", True, False) and not paths.trying
    fresh.clear()  # the session is lost (the NAT router restarted)
    paths.observed(dev("203.0.113.7:51820"), [NATED])
    assert paths.want(NATED) == ("203.0.113.7:51820", False, True)  # what worked last comes first


def test_a_peer_that_moved_is_tried_at_its_new_candidates_before_its_session_ends() -> None:
    """Its session is younger than 180 s, but it went quiet past its rhythm and no longer
    lists the endpoint we hold: its NAT mapping changed. Its candidates are tried at once."""
    fresh, quiet = {PK}, set()
    clock = FakeClock()
    paths = Paths(clock.mono, lambda pk: pk in fresh, lambda pk: pk in quiet)
    paths.observed(dev("203.0.113.7:51820", handshake=1), [NATED])
    assert paths.want(NATED) == ("203.0.113.7:51820", True, False)
    quiet.add(PK)  # quiet past its rhythm, still listing where we hold it: keep it (keepalives off)
    paths.observed(dev("203.0.113.7:51820", handshake=1), [NATED])
    assert paths.describe(PK) == "direct"
    moved = Peer("n", PK, ip_address("192.168.1.5"), ip_network("fd10:5::/48"), 51820, ("203.0.113.99:51820",))  # noqa: E501
    assert paths.observed(dev("203.0.113.7:51820", handshake=1), [moved]) == {PK}
    assert paths.want(moved) == ("192.168.1.5:51820", False, True)  # the old endpoint is not retried
    clock.advance(TRY_SECONDS)
    paths.observed(dev("192.168.1.5:51820", handshake=1), [moved])
    assert paths.want(moved) == ("203.0.113.99:51820", False, True)  # still trying: not heard yet
    quiet.clear()  # the handshake came
    paths.observed(dev("203.0.113.99:51820", handshake=2), [moved])
    assert paths.want(moved) == ("203.0.113.99:51820", True, False) and paths.describe(PK) == "direct"


def test_a_single_candidate_is_never_cycled() -> None:
    v03 = Peer("old", PK, ip_address("198.18.0.3"), ip_network("fd10:5::/48"), 51820)
    paths, clock = setup(set())
    for _ in range(5):
        assert paths.observed(dev("198.18.0.3:51820"), [v03]) == set()
        clock.advance(TRY_SECONDS)
    assert paths.want(v03) == ("198.18.0.3:51820", False, False) and not paths.trying


def test_reconcile_keeps_a_learned_endpoint_and_twice_changes_nothing() -> None:
    learned = WgPeer(PK, "198.51.100.77:40001", ("fd10:5::/48",), 1, 100, 100, 25)
    observed = {PK: learned}
    keep = want(NATED, 25, NATED.endpoint, keep_endpoint=True)
    assert not diff({PK: keep}, observed)  # the bucket's endpoint differs: kept anyway
    # a change of something else is applied without touching the endpoint
    changed = PeerWant(keep.name, want(NATED, 0, NATED.endpoint).config, keep_endpoint=True)
    plan = diff({PK: changed}, observed)
    assert plan.set[0].endpoint == "" and "keepalive 25 -> 0" in plan.changes[0].why
    applied(plan, observed)
    assert observed[PK].endpoint == "198.51.100.77:40001"
    assert not diff({PK: changed}, observed)
    # no session: the chosen candidate is applied; while trying, by re-adding the peer
    plan = diff({PK: want(NATED, 0, "203.0.113.7:51820")}, observed)
    assert plan.set[0].endpoint == "203.0.113.7:51820" and plan.remove == ()
    plan = diff({PK: want(NATED, 0, "203.0.113.7:51820", readd=True)}, observed)
    assert plan.remove == (PK,) and plan.set[0].endpoint == "203.0.113.7:51820"
    assert "re-added" in plan.changes[0].why
    applied(plan, observed)
    assert observed[PK].endpoint == "203.0.113.7:51820"


def test_our_candidates() -> None:
    got = our_candidates(
        sighted="203.0.113.7:40001",
        nats_sees="203.0.113.7",
        local=[ip_address(a) for a in ("192.168.1.5", "fd10:5::1", "127.0.0.1", "10.1.1.1")],
        port=51820,
        advertise=ip_address("192.168.1.5"),
        mesh=ip_network("fd10::/16"),
    )
    # what others see first, then where NATS sees us, then our addresses; never the mesh,
    # loopback or the advertised endpoint again
    assert got == ("203.0.113.7:40001", "203.0.113.7:51820", "10.1.1.1:51820")


def test_a_sighting_is_kept_replaced_when_we_move_and_dropped_behind_a_symmetric_nat() -> None:
    s = Sighting()
    assert s.update(None, "203.0.113.7") is None
    assert s.update("203.0.113.7:51820", "203.0.113.7") == "203.0.113.7:51820"
    assert s.update(None, "203.0.113.7") == "203.0.113.7:51820"  # kept once learned
    # NATS sees us from a new address: the old sighting is from the old network
    assert s.update(None, "198.51.100.4") is None
    assert s.update("198.51.100.4:51820", "198.51.100.4") == "198.51.100.4:51820"
    # another witness sees another port at the same address: symmetric, nothing to publish,
    # and the next reports from that address change nothing (no entry rewrite per report)
    assert s.update("198.51.100.4:40987", "198.51.100.4") is None
    assert s.symmetric == "198.51.100.4"
    assert s.update("198.51.100.4:61188", "198.51.100.4") is None
    assert s.update("198.51.100.4:51820", "198.51.100.4") is None
