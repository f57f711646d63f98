"""What the admin API shows: the agent's parts read into plain JSON-ready values."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ikto import ipam
from ikto import records as records_
from ikto.errors import IktoError
from ikto.metrics import PeerSample, Sample

if TYPE_CHECKING:
    from ikto.agent import Agent


def node(agent: Agent) -> dict[str, Any]:
    """This node: its entry, interface address, device, bucket key and revision."""
    m = agent.membership
    return {
        **m.peer.to_entry(),
        "routes_refused": {str(n): why for n, why in agent.reservations.refused.items()},
        "address": str(agent.config.interface_address),
        "dev": agent.config.wg_dev_name,
        "key": m.key,
        "revision": m.revision,
    }


def health(agent: Agent) -> dict[str, Any]:
    """Connected, snapshot loaded, and the counters an operator checks first."""
    connected = agent.store is not None and agent.store.connected
    done = agent.follower.snapshot_done
    a = agent.applier
    watch_error = agent.follower.watch_error
    return {
        "ok": connected and done and watch_error is None,
        "nats_connected": connected,
        "snapshot_loaded": done,
        "watch_error": watch_error,
        "presence": "often" if agent.presence.needed else "rarely",
        "server_clock_skew_s": None if agent.clock.skew is None else round(agent.clock.skew, 3),
        "peers_wanted": len(agent.mesh.peers()),
        "peers_in_wireguard": len(a.observed),
        "rejected_entries": len(agent.mesh.rejected),
        "wg_calls": a.wg_calls,
        "apply_errors": a.apply_errors,
        "last_full_reconcile": a.last_full_reconcile,
        "uptime_s": round(time.time() - agent.started, 1),
    }


async def peers(agent: Agent) -> list[dict[str, Any]]:
    """The bucket's peers joined with WireGuard's live view and their liveness."""
    dev = await asyncio.to_thread(agent.wg.dump)
    mesh = agent.mesh
    now = time.time()
    known = {p.public_key: p for p in mesh.peers()}
    for k in mesh.expired:
        if k in mesh.entries:
            p = mesh.entries[k][1]
            known.setdefault(p.public_key, p)
    out = []
    for p in sorted(known.values(), key=lambda p: (p.allowed_ip.version, p.allowed_ip)):
        key = ipam.peer_key(p.allowed_ip)
        wp = dev.peers.get(p.public_key)
        hs = wp.latest_handshake if wp else 0
        verdict = agent.vitals.verdict(key, wp is not None)
        silent = verdict.silent_s
        out.append(
            {
                **p.to_entry(),
                "state": str(verdict.state),
                "evidence": verdict.evidence and str(verdict.evidence),
                "path": agent.paths.describe(p.public_key) if wp is not None else None,
                "in_wireguard": wp is not None,
                "silent_s": None if silent is None else round(silent),
                "endpoint": wp.endpoint if wp else None,
                "latest_handshake": hs,
                "handshake_age_s": round(now - hs) if hs else None,
                "rx_bytes": wp.rx_bytes if wp else 0,
                "tx_bytes": wp.tx_bytes if wp else 0,
            }
        )
    return out


def rejected(agent: Agent) -> list[dict[str, Any]]:
    """Entries skipped (with the reason), and public-key conflicts lost."""
    mesh = agent.mesh
    out: list[dict[str, Any]] = [
        {"key": r.key, "revision": r.revision, "reason": r.reason}
        for r in sorted(mesh.rejected.values(), key=lambda r: r.key)
    ]
    for (key, net), why in sorted(agent.reservations.decision.refused.items(), key=lambda kv: str(kv[0])):
        out.append({"key": key, "revision": mesh.revision_of(key), "reason": f"routed network {net}: {why}"})
    for net, why in sorted(agent.reservations.refused.items(), key=lambda kv: str(kv[0])):
        out.append({"key": "ours", "revision": None, "reason": f"our routed network {net}: {why}"})
    for key, winner in sorted(mesh.losers().items()):
        reason = f"public key already used by {winner}"
        out.append({"key": key, "revision": mesh.revision_of(key), "reason": reason})
    return out


async def status(agent: Agent) -> dict[str, Any]:
    """Everything `ikto status` prints."""
    listed = await peers(agent)
    return {"node": node(agent), "health": health(agent), "peers": listed, "rejected": rejected(agent)}


def metrics_sample(agent: Agent) -> Sample:
    """What a scrape shows, from the parts' state (the last look at WireGuard: no `wg` call)."""
    mesh, dev, a = agent.mesh, agent.applier.device, agent.applier
    peers: list[PeerSample] = []
    states: dict[str, int] = {}
    known = {p.public_key: (k, p) for k, p in mesh.others()}
    for key, p in known.values():
        wp = dev.peers.get(p.public_key) if dev is not None else None
        state = agent.vitals.verdict(key, wp is not None).state
        states[state] = states.get(state, 0) + 1
    if dev is not None and agent.metrics.wants_peers(len(dev.peers)):
        for pk, wp in dev.peers.items():
            held = known.get(pk)
            peers.append(PeerSample(
                pk, held[1].name if held else "", ",".join(wp.allowed_ips), wp.endpoint or "",
                wp.rx_bytes, wp.tx_bytes, wp.latest_handshake,
            ))
    store = agent.store
    return Sample(
        device=agent.config.wg_dev_name,
        public_key=agent.public_key,
        peers=tuple(peers),
        states=states,
        rejected=len(mesh.rejected) + len(mesh.losers()),
        nats_connected=store is not None and store.connected,
        snapshot_loaded=agent.follower.snapshot_done,
        watch_refused=agent.follower.watch_error is not None,
        revision=agent.follower.revision,
        wg_calls=a.wg_calls,
        apply_errors=a.apply_errors,
        apply_latency=a.latency,
        presence_writes=agent.presence.writes,
        presence_failures=agent.presence.failures,
        witness_writes=agent.prober.witness_writes,
        record_reads=agent.prober.reads,
        watch_rebuilds=dict(agent.follower.rebuilds),
        peer_count=len(dev.peers) if dev is not None else 0,
    )


async def mesh(agent: Agent) -> dict[str, Any]:
    """The whole mesh as each node reports it: one row per node, whom it cannot reach."""
    if agent.store is None or not agent.store.connected:
        raise IktoError("not connected to NATS: the nodes' reports cannot be read now")
    records = await agent.store.latest("alive.*")
    now = agent.clock.server()
    reports = {}
    for e in records:
        got = records_.report_of(e.value)
        if got is not None and e.created is not None:
            reports[e.key.removeprefix("alive.")] = (got, now - e.created.timestamp())
    rows: list[dict[str, Any]] = []
    mine = agent.membership.key
    for key, (_, peer) in sorted(agent.mesh.entries.items(), key=lambda kv: kv[1][1].name):
        rep = reports.get(key.removeprefix("peers."))
        state = "self" if key == mine else str(agent.vitals.verdict(key, True).state)
        row: dict[str, Any] = {"name": peer.name, "allowed_ip": str(peer.allowed_ip), "state": state}
        if rep is None or rep[0][1] is None:
            row["reporting"] = False
            row["why"] = "an ikto v0.3 node (writes no report)" if not peer.speaks else "no report yet"
        else:
            (_, r), age = rep
            assert r is not None
            row.update(
                reporting=True, report_age_s=round(age), revision=r.revision, expected=r.expected,
                in_wireguard=r.in_wireguard, handshaking=r.handshaking, unreachable=list(r.unreachable),
            )
        rows.append(row)
    pairs = [(r["name"], u) for r in rows if r.get("unreachable") for u in r["unreachable"]]
    return {"nodes": rows, "reporting": sum(r["reporting"] for r in rows), "unreachable_pairs": pairs}
