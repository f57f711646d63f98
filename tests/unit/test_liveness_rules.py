"""Liveness decisions, table-driven: the same functions the agent and the admin API call."""

from __future__ import annotations

import pytest

from ikto.liveness import (
    Evidence,
    Policy,
    Signs,
    State,
    age,
    back,
    cadence,
    expire,
    judge,
    needs_presence,
    needs_probe,
    quiet,
    reclaimable,
    silence,
    witness_interval,
)

P = Policy(stale_after=45, remove_after=600, reclaim_after=3600)


@pytest.mark.parametrize(
    ("then", "now", "floor", "want"),
    [
        (None, 100.0, None, None),  # never: unknown
        (10.0, 100.0, None, 90.0),
        (10.0, 100.0, 50.0, 50.0),  # an outage of ours restarts every clock at the floor
        (80.0, 100.0, 50.0, 20.0),  # a later sign of life beats the floor
        (120.0, 100.0, None, 0.0),  # never negative (a sign stamped by a clock ahead of ours)
    ],
)
def test_age(then, now, floor, want):
    assert age(then, now, floor) == want


@pytest.mark.parametrize(
    ("signs", "evidence", "silent"),
    [
        (Signs(), None, None),
        (Signs(entry=3000.0), Evidence.ENTRY, 3000.0),
        # a v0.3 node: its entry is old, its handshakes are fresh: the handshake speaks
        (Signs(handshake=12.0, entry=86400.0), Evidence.HANDSHAKE, 12.0),
        (Signs(handshake=900.0, presence=4.0, entry=86400.0), Evidence.PRESENCE, 4.0),
        (Signs(handshake=900.0, witness=20.0), Evidence.WITNESS, 20.0),
        (Signs(handshake=5.0, presence=5.0), Evidence.HANDSHAKE, 5.0),  # a tie goes to the data plane
    ],
)
def test_the_youngest_evidence_speaks(signs, evidence, silent):
    assert silence(signs) == silent
    assert judge(signs, expired=False, in_wireguard=True, policy=P).evidence == evidence


@pytest.mark.parametrize(
    ("signs", "expired", "in_wg", "state"),
    [
        (Signs(), False, False, State.PENDING),
        (Signs(), False, True, State.OK),
        (Signs(entry=10.0), False, True, State.OK),
        (Signs(entry=45.0), False, True, State.OK),  # the bound itself is still ok
        (Signs(entry=45.1), False, True, State.STALE),
        (Signs(entry=45.1), False, False, State.STALE),
        (Signs(entry=700.0, handshake=30.0), False, True, State.OK),  # handshaking: never stale
        (Signs(handshake=700.0, presence=2.0), False, True, State.OK),  # no path, but alive
        (Signs(entry=700.0), False, True, State.STALE),  # silent past remove_after, not yet decided
        (Signs(entry=700.0), True, False, State.EXPIRED),
        (Signs(entry=1.0), True, False, State.EXPIRED),  # decided out: shown out until decided back
    ],
)
def test_judge(signs, expired, in_wg, state):
    v = judge(signs, expired=expired, in_wireguard=in_wg, policy=P)
    assert v.state == state and v.silent_s == silence(signs)


@pytest.mark.parametrize(
    ("silent", "already", "out", "held_back"),
    [
        ({}, set(), set(), False),
        ({"a": 10.0, "b": 20.0, "c": 30.0}, set(), set(), False),
        ({"a": 601.0, "b": 20.0, "c": 30.0}, set(), {"a"}, False),
        ({"a": 600.0, "b": 20.0, "c": 30.0}, set(), set(), False),  # the bound itself stays
        ({"a": 5.0, "b": 20.0, "c": 30.0}, {"a"}, {"a"}, False),  # out stays out until decided back
        ({"a": None, "b": 20.0, "c": 30.0}, set(), set(), False),  # unknown is not silent
        # more than half would be out: it is us, not them; nothing changes
        ({"a": 601.0, "b": 601.0, "c": 30.0}, set(), set(), True),
        ({"a": 601.0, "b": 601.0, "c": 30.0}, {"a"}, {"a"}, True),
        ({"a": 601.0, "b": 601.0, "c": 30.0, "d": 1.0}, set(), {"a", "b"}, False),  # half is fine
        ({"a": 601.0}, set(), set(), True),  # a single silent peer out of one is "most"
    ],
)
def test_expire(silent, already, out, held_back):
    d = expire(silent, already, P)
    assert set(d.expired) == out and d.held_back is held_back


@pytest.mark.parametrize(
    ("signs", "want"),
    [(Signs(), False), (Signs(entry=46.0), False), (Signs(entry=45.0), True), (Signs(handshake=1.0), True)],
)
def test_an_expired_peer_comes_back_with_fresh_evidence_only(signs, want):
    assert back(signs, P) is want


@pytest.mark.parametrize(("silent", "want"), [(None, False), (10.0, False), (3600.0, False), (3600.5, True)])
def test_reclaimable(silent, want):
    assert reclaimable(silent, P.reclaim_after) is want


@pytest.mark.parametrize(
    ("signs", "want"),
    [
        (Signs(handshake=5.0, entry=9999.0), False),  # the data plane answers: read nothing
        (Signs(handshake=23.0), True),  # past half of stale_after
        (Signs(handshake=90.0, entry=3.0), False),  # it just wrote its entry
        (Signs(), True),  # nothing known at all
        (Signs(handshake=90.0, presence=1.0), True),  # presence read earlier does not count
    ],
)
def test_records_are_read_only_when_free_evidence_is_old(signs, want):
    assert needs_probe(signs, P) is want


@pytest.mark.parametrize(
    ("quiet", "silent", "peer_presence", "first", "want"),
    [
        (5.0, 5.0, None, True, False),  # we hear each other on the data plane
        (30.0, 30.0, None, True, True),  # lost, alive a moment ago: the lower key starts
        (30.0, 30.0, None, False, False),  # …the higher one waits for the peer's record
        (30.0, 3.0, 3.0, False, True),  # …and follows once that record is fresh
        (30.0, 50.0, None, True, False),  # stale: a dead peer makes us write nothing
        (None, 3.0, None, True, True),  # never heard on the data plane, but alive
        (30.0, None, None, True, False),  # nothing known at all
    ],
)
def test_presence_is_written_often_only_for_a_peer_that_needs_it(quiet, silent, peer_presence, first, want):
    assert needs_presence(quiet, silent, peer_presence, P, first=first) is want


def test_witness_intervals_spread_the_observers():
    intervals = [witness_interval(f"o{i}", "subject", 1000, base=15.0, cap=900.0) for i in range(1000)]
    assert min(intervals) >= 15.0 and max(intervals) <= 900.0
    # the first observers keep the record fresh; the rest only check at the cap (so a sole
    # observer is never later than cap): reads ~ log(N)/base + N/cap per second, not N/base
    assert sum(1 / i for i in intervals) < 0.5 + 1000 / 900
    assert sorted(intervals)[0] <= 4 * 15.0  # the first observer: rank 0 to 3, whatever the draw
    again = witness_interval("o1", "subject", 1000, 15.0, 900.0)
    assert again == witness_interval("o1", "subject", 1000, 15.0, 900.0)  # deterministic


@pytest.mark.parametrize(
    ("keeps_alive", "keepalive", "want"),
    [
        (True, 25, 30.0),  # an ikto node sends every 25 s; we look every 5 s
        (False, 25, 125.0),  # a v0.3 node only answers the rekeys our keepalives cause
        (True, 0, 185.0),  # keepalives off: only the session's life says anything
    ],
)
def test_cadence(keeps_alive, keepalive, want):
    assert cadence(keeps_alive=keeps_alive, keepalive=keepalive, look_interval=5.0) == want


def test_quiet_counts_only_past_the_cadence():
    assert quiet(None, 30.0) is None
    assert quiet(20.0, 30.0) == 0.0  # a live peer between two keepalives is not silent
    assert quiet(100.0, 30.0) == 70.0


def test_writing_presence_often_is_sticky_until_the_peer_is_well_stale():
    assert not needs_presence(30.0, 50.0, None, P, first=True)  # would not start writing often…
    assert needs_presence(30.0, 50.0, None, P, first=True, already=True)  # …nor stop for a late record
    assert not needs_presence(30.0, 70.0, None, P, first=True, already=True)  # gone: stop
    assert not needs_presence(5.0, 3.0, 3.0, P, first=True, already=True)  # the data plane works: stop
