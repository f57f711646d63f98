"""Reconcile as data: wanted peers + what WireGuard reports → the plan to apply. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ikto.models import Peer, PeerConfig, Plan, WgPeer


def peer_config(peer: Peer, keepalive: int) -> PeerConfig:
    """What WireGuard should hold for one mesh peer."""
    return PeerConfig(peer.public_key, (str(peer.allowed_ip),), peer.endpoint, keepalive)


def matches(want: PeerConfig, have: WgPeer) -> bool:
    """True if WireGuard already holds exactly what we want for this peer."""
    return (
        want.endpoint == have.endpoint
        and want.persistent_keepalive == have.persistent_keepalive
        and sorted(want.allowed_ips) == sorted(have.allowed_ips)
    )


def diff(
    wanted: Mapping[str, PeerConfig],
    observed: Mapping[str, WgPeer],
    public_keys: Iterable[str] | None = None,
) -> Plan:
    """The plan that makes `observed` equal `wanted`, for the given keys or for all.

    With `public_keys`, only those peers are compared: O(changed), not O(peers).
    Unchanged peers are left alone, so their sessions and learned state survive.
    """
    keys: Iterable[str] = (
        public_keys if public_keys is not None else set(wanted) | set(observed)
    )
    to_set: list[PeerConfig] = []
    to_remove: list[str] = []
    for k in sorted(keys):
        want = wanted.get(k)
        have = observed.get(k)
        if want is None:
            if have is not None:
                to_remove.append(k)
        elif have is None or not matches(want, have):
            to_set.append(want)
    return Plan(set=tuple(to_set), remove=tuple(to_remove))


def applied(plan: Plan, observed: dict[str, WgPeer]) -> None:
    """Update a cached view of WireGuard as if `plan` had been applied (counters reset)."""
    for k in plan.remove:
        observed.pop(k, None)
    for pc in plan.set:
        old = observed.get(pc.public_key)
        observed[pc.public_key] = WgPeer(
            public_key=pc.public_key,
            endpoint=pc.endpoint,
            allowed_ips=pc.allowed_ips,
            latest_handshake=old.latest_handshake if old else 0,
            rx_bytes=old.rx_bytes if old else 0,
            tx_bytes=old.tx_bytes if old else 0,
            persistent_keepalive=pc.persistent_keepalive,
        )
