"""Liveness decisions, table-driven: the same functions the agent and the admin API call."""

from __future__ import annotations

import pytest

from ikto.liveness import Evidence, Policy, State, expire, judge, reclaimable, silence

P = Policy(stale_after=45, remove_after=600, reclaim_after=3600)


@pytest.mark.parametrize(
    ("last", "now", "floor", "want"),
    [
        (None, 100.0, None, None),  # never wrote: unknown
        (10.0, None, None, None),  # no server clock yet: unknown
        (10.0, 100.0, None, 90.0),
        (10.0, 100.0, 50.0, 50.0),  # an outage of ours restarts every clock at the floor
        (80.0, 100.0, 50.0, 20.0),  # a later sign of life beats the floor
        (120.0, 100.0, None, 0.0),  # never negative
    ],
)
def test_silence(last, now, floor, want):
    assert silence(last, now, floor) == want


@pytest.mark.parametrize(
    ("silent", "expired", "in_wg", "state"),
    [
        (None, False, False, State.PENDING),
        (None, False, True, State.OK),
        (10.0, False, True, State.OK),
        (45.0, False, True, State.OK),  # the bound itself is still ok
        (45.1, False, True, State.STALE),
        (45.1, False, False, State.STALE),
        (700.0, False, True, State.STALE),  # silent past remove_after, not yet decided
        (700.0, True, False, State.EXPIRED),
        (1.0, True, False, State.EXPIRED),  # decided out: shown out until it writes again
    ],
)
def test_judge(silent, expired, in_wg, state):
    v = judge(silent, expired=expired, in_wireguard=in_wg, policy=P)
    assert v.state == state
    assert v.silent_s == silent
    assert v.evidence == (Evidence.ENTRY if silent is not None else None)


@pytest.mark.parametrize(
    ("silent", "already", "out", "held_back"),
    [
        ({}, set(), set(), False),
        ({"a": 10.0, "b": 20.0, "c": 30.0}, set(), set(), False),
        ({"a": 601.0, "b": 20.0, "c": 30.0}, set(), {"a"}, False),
        ({"a": 600.0, "b": 20.0, "c": 30.0}, set(), set(), False),  # the bound itself stays
        ({"a": 5.0, "b": 20.0, "c": 30.0}, {"a"}, {"a"}, False),  # out stays out (until it writes)
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
    ("silent", "want"), [(None, False), (10.0, False), (3600.0, False), (3600.5, True)]
)
def test_reclaimable(silent, want):
    assert reclaimable(silent, P.reclaim_after) is want
