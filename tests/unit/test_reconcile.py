"""Plans explain themselves: every change carries the peer's name, old and new, and why."""

from __future__ import annotations

from ikto.models import PeerConfig, PeerWant, WgPeer
from ikto.reconcile import diff

A, B, C = ("A" * 43 + "=", "B" * 43 + "=", "C" * 43 + "=")


def have(key: str, endpoint: str = "198.18.0.1:51820", ips: tuple[str, ...] = ("fd10:1::/48",)) -> WgPeer:
    return WgPeer(key, endpoint, ips, 1700000000, 10, 20, 25)


def cfg(key: str, endpoint: str = "198.18.0.1:51820", ips: tuple[str, ...] = ("fd10:1::/48",)) -> PeerConfig:
    return PeerConfig(key, ips, endpoint, 25)


def test_changes_carry_old_new_name_and_why() -> None:
    wanted = {
        A: PeerWant("alpha", cfg(A)),  # new
        B: PeerWant("beta", cfg(B, "198.18.0.9:51820")),  # its endpoint moved
        C: PeerWant("gamma", None, "silent too long (entry kept)"),  # known, left out
    }
    observed = {B: have(B), C: have(C)}
    plan = diff(wanted, observed)
    by = {c.public_key: c for c in plan.changes}
    assert by[A].kind == "add" and by[A].name == "alpha" and by[A].old is None and by[A].why == "new peer"
    assert by[B].kind == "change" and by[B].old == observed[B] and by[B].new == wanted[B].config
    assert by[B].why == "endpoint 198.18.0.1:51820 -> 198.18.0.9:51820"
    assert by[C].kind == "remove" and by[C].name == "gamma" and by[C].why == "silent too long (entry kept)"
    assert plan.remove == (C,) and {p.public_key for p in plan.set} == {A, B}


def test_a_stranger_in_wireguard_is_removed_as_not_in_the_bucket() -> None:
    plan = diff({}, {A: have(A)})
    assert [(c.kind, c.name, c.why) for c in plan.changes] == [("remove", "?", "not in the bucket")]


def test_nothing_to_do_is_an_empty_plan_and_without_removals_keeps_the_rest() -> None:
    assert not diff({A: PeerWant("alpha", cfg(A))}, {A: have(A)})
    plan = diff({A: PeerWant("alpha", cfg(A, ips=("fd10:1::/48", "10.0.0.0/24")))}, {A: have(A), B: have(B)})
    assert len(plan) == 2
    kept = plan.without_removals()
    assert kept.remove == () and kept.set == plan.set and [c.kind for c in kept.changes] == ["change"]
    assert "allowed-ips fd10:1::/48 -> fd10:1::/48,10.0.0.0/24" in kept.changes[0].why


def test_holding_removals_keeps_a_readd() -> None:
    """A peer re-added to try another endpoint is removed and set in one call: while removals
    are held (after a snapshot), the remove half must stay, or no handshake starts at once."""
    want = PeerWant("alpha", cfg(A, endpoint="198.18.0.9:51820"), readd=True)
    plan = diff({A: want}, {A: have(A), B: have(B)})
    assert set(plan.remove) == {A, B}
    kept = plan.without_removals()
    assert kept.remove == (A,) and [p.public_key for p in kept.set] == [A]
