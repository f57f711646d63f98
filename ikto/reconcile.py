"""Reconcile as data: what we want + what WireGuard reports → the plan to apply. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ikto.ipam import Network
from ikto.models import Peer, PeerChange, PeerConfig, PeerWant, Plan, WgPeer


def peer_config(
    peer: Peer, keepalive: int, endpoint: str | None = None, routed: tuple[Network, ...] = ()
) -> PeerConfig:
    """What WireGuard should hold for one mesh peer (at `endpoint`, else the advertised one),
    with the networks it routes for us (`routed`, applied only while reserved: routes.py)."""
    ips = (str(peer.allowed_ip), *(str(n) for n in routed))
    return PeerConfig(peer.public_key, ips, endpoint or peer.endpoint, keepalive)


def want(
    peer: Peer,
    keepalive: int,
    endpoint: str | None = None,
    *,
    keep_endpoint: bool = False,
    readd: bool = False,
    routed: tuple[Network, ...] = (),
) -> PeerWant:
    """A peer we want in WireGuard; `keep_endpoint`: its session works, keep what WireGuard
    learned; `readd`: it has none, re-add it when its endpoint changes (an immediate handshake)."""
    config = peer_config(peer, keepalive, endpoint, routed)
    return PeerWant(peer.name, config, keep_endpoint=keep_endpoint, readd=readd)


def matches(want: PeerConfig, have: WgPeer, *, keep_endpoint: bool = False) -> bool:
    """True if WireGuard already holds exactly what we want for this peer."""
    return not differences(want, have, keep_endpoint=keep_endpoint)


def differences(want: PeerConfig, have: WgPeer, *, keep_endpoint: bool = False) -> list[str]:
    """What differs between the wanted and the held peer, as `field old -> new` texts.

    With `keep_endpoint` the endpoint is not compared: a working session's endpoint is one
    WireGuard learned from authenticated packets, a fact the bucket must not overwrite.
    """
    out = []
    if want.endpoint != have.endpoint and not keep_endpoint:
        out.append(f"endpoint {have.endpoint or '(none)'} -> {want.endpoint}")
    if sorted(want.allowed_ips) != sorted(have.allowed_ips):
        out.append(f"allowed-ips {','.join(have.allowed_ips) or '(none)'} -> {','.join(want.allowed_ips)}")
    if want.persistent_keepalive != have.persistent_keepalive:
        out.append(f"keepalive {have.persistent_keepalive} -> {want.persistent_keepalive}")
    return out


def diff(
    wanted: Mapping[str, PeerWant],
    observed: Mapping[str, WgPeer],
    public_keys: Iterable[str] | None = None,
) -> Plan:
    """The plan that makes `observed` equal `wanted`, for the given keys or for all.

    `wanted` maps public keys to what we want, including keys we know but leave out (config
    None) so a removal can say why. With `public_keys`, only those peers are compared:
    O(changed), not O(peers). Unchanged peers are left alone, so their sessions and learned
    state survive, and so does the endpoint of a peer whose session works (keep_endpoint).
    """
    keys: Iterable[str] = public_keys if public_keys is not None else set(wanted) | set(observed)
    to_set: list[PeerConfig] = []
    to_remove: list[str] = []
    changes: list[PeerChange] = []
    for k in sorted(keys):
        w = wanted.get(k)
        have = observed.get(k)
        new = w.config if w is not None else None
        if new is None:
            if have is not None:
                to_remove.append(k)
                why = w.why_absent if w is not None else "not in the bucket"
                changes.append(PeerChange(k, w.name if w is not None else "?", have, None, why))
        elif have is None:
            to_set.append(new)
            changes.append(PeerChange(k, w.name if w else "?", None, new, "new peer"))
        elif w is not None and (what := differences(new, have, keep_endpoint=w.keep_endpoint)):
            if w.keep_endpoint:
                new = replace(new, endpoint="")  # `wg set` without an endpoint keeps WireGuard's
            elif w.readd and new.endpoint != have.endpoint:
                to_remove.append(k)  # removed, then set again in the same call
                what.append("re-added for an immediate handshake")
            to_set.append(new)
            changes.append(PeerChange(k, w.name, have, new, "; ".join(what)))
    return Plan(set=tuple(to_set), remove=tuple(to_remove), changes=tuple(changes))


def applied(plan: Plan, observed: dict[str, WgPeer]) -> None:
    """Update a cached view of WireGuard as if `plan` had been applied (counters reset)."""
    for k in plan.remove:
        observed.pop(k, None)
    for pc in plan.set:
        old = observed.get(pc.public_key)
        observed[pc.public_key] = WgPeer(
            public_key=pc.public_key,
            endpoint=pc.endpoint or (old.endpoint if old else None),
            allowed_ips=pc.allowed_ips,
            latest_handshake=old.latest_handshake if old else 0,
            rx_bytes=old.rx_bytes if old else 0,
            tx_bytes=old.tx_bytes if old else 0,
            persistent_keepalive=pc.persistent_keepalive,
        )
