"""What `ikto info` and `ikto status` print: the admin API's answers as lines of text. Pure."""

from __future__ import annotations

from typing import Any

NO_PATH_HINT = (
    "no direct path: every candidate endpoint was tried; when both sides are behind NATs and "
    "one of them randomises ports (a symmetric NAT), only a relay could connect them"
)


def info(node: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """The local node and its peers, as ikto v0.3 printed them."""
    lines = ["Local Node:", *_peer(node), "Peers:"]
    for p in peers:
        lines += _peer(p)
    return lines


def _peer(p: dict[str, Any]) -> list[str]:
    return [
        f"Name: {p['name']}",
        f"Public Key: {p['public_key']}",
        f"Advertise Address: {p['advertise_address']}",
        f"Allowed IP: {p['allowed_ip']}",
        f"WireGuard Port: {p['wg_port']}",
        "",
    ]


def status(st: dict[str, Any]) -> list[str]:
    """The node's health line, one row per peer, then what needs a person's attention."""
    node, health = st["node"], st["health"]
    state = "healthy" if health["ok"] else "DEGRADED"
    lines = [
        f"node {node['name']} {node['allowed_ip']} on {node['dev']} "
        f"({state}; nats {'connected' if health['nats_connected'] else 'DISCONNECTED'})"
    ]
    if health.get("watch_error"):
        lines.append(f"watch refused: {health['watch_error']}")
    rows = [("NAME", "ALLOWED IP", "ENDPOINT", "HANDSHAKE", "RX", "TX", "STATE", "EVIDENCE", "PATH")]
    for p in st["peers"]:
        rows.append(
            (
                p["name"] or "-",
                p["allowed_ip"],
                p["endpoint"] or f"{p['advertise_address']}:{p['wg_port']}",
                age(p["handshake_age_s"]),
                size(p["rx_bytes"]),
                size(p["tx_bytes"]),
                p.get("state") or ("ok" if p["in_wireguard"] else "pending"),
                p.get("evidence") or "-",
                p.get("path") or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(st['peers'])} peer(s)")
    if any((p.get("path") or "").startswith("no direct path") for p in st["peers"]):
        lines.append(f"note: {NO_PATH_HINT}")
    if st["rejected"]:
        lines.append("\nrejected entries:")
        lines += [f"  {r['key']} (revision {r['revision']}): {r['reason']}" for r in st["rejected"]]
    return lines


def age(seconds: float | None) -> str:
    """`12s ago`, `5m ago`, `3h ago` or `never`."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def size(n: float) -> str:
    """Bytes in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def bucket(info: dict[str, Any]) -> list[str]:
    """`ikto bucket`: the bucket's limits and usage."""
    limit = info["max_consumers"]
    limit_text = "server default (1,000 on nats-server 2.11+)" if limit < 0 else f"{limit:,}"
    lines = [
        f"bucket {info['bucket']} (stream {info['stream']}) on {info['server']}",
        f"  watches:      {info['consumers']:,} of {limit_text}",
        f"  entries:      {info['entries']:,} messages kept, last revision {info['last_revision']:,}",
        f"  history:      {info['history']} revisions per key; values up to {info['max_value_size']:,} bytes",
        f"  replicas:     {info['replicas']}; direct gets {'on' if info['direct_gets'] else 'off'}",
    ]
    if limit > 0 and info["consumers"] > 0.8 * limit:
        lines.append("  warning: nearly full; raise it with --max-consumers")
    return lines


def mesh(m: dict[str, Any]) -> list[str]:
    """`ikto status --mesh`: one line per node, whom it cannot reach, and a summary."""
    rows = [("NODE", "ALLOWED IP", "STATE", "REPORT", "PEERS", "HANDSHAKING", "CANNOT REACH")]
    for n in m["nodes"]:
        if n["reporting"]:
            report = age(n["report_age_s"])
            peers = f"{n['in_wireguard']}/{n['expected']}"
            hs = str(n["handshaking"])
            cannot = ", ".join(n["unreachable"]) or "-"
        else:
            report, peers, hs, cannot = f"none: {n['why']}", "-", "-", "-"
        rows.append((n["name"] or "-", n["allowed_ip"], n["state"], report, peers, hs, cannot))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    pairs = m["unreachable_pairs"]
    summary = f"{len(m['nodes'])} nodes, {m['reporting']} reporting, "
    if not pairs:  # say only what the reports say
        if m["reporting"] == 0:
            summary += "no reports yet (nodes write theirs within a few seconds of starting)"
        elif m["reporting"] < len(m["nodes"]):
            summary += "every reporting node reaches its peers"
        else:
            summary += "every node reaches every peer"
    else:
        shown = ", ".join(f"{a} -> {b}" for a, b in pairs[:10]) + (", ..." if len(pairs) > 10 else "")
        summary += f"{len(pairs)} {'pair' if len(pairs) == 1 else 'pairs'} unreachable: {shown}"
    return [*lines, summary]
