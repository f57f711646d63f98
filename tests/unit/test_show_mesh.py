"""`ikto status --mesh` as text: the summary says only what the nodes' reports say."""

from __future__ import annotations

from typing import Any

import pytest

from ikto import show


def node(name: str, reporting: bool, unreachable: tuple[str, ...] = ()) -> dict[str, Any]:
    n: dict[str, Any] = {"name": name, "allowed_ip": "198.19.1.0/24", "state": "ok", "reporting": reporting}
    if reporting:
        n.update(report_age_s=3, in_wireguard=2, expected=2, handshaking=2, unreachable=list(unreachable))
    else:
        n["why"] = "no report yet"
    return n


A_CANNOT_REACH_B = [node("a", True, ("b",)), node("b", True)]


@pytest.mark.parametrize(
    ("nodes", "pairs", "summary"),
    [
        ([node("a", False), node("b", False)], [], "2 nodes, 0 reporting, no reports yet"),
        ([node("a", True), node("b", False)], [], "2 nodes, 1 reporting, every reporting node reaches"),
        ([node("a", True), node("b", True)], [], "2 nodes, 2 reporting, every node reaches every peer"),
        (A_CANNOT_REACH_B, [("a", "b")], "2 nodes, 2 reporting, 1 pair unreachable: a -> b"),
    ],
)
def test_the_summary_line(nodes: list[dict[str, Any]], pairs: list[tuple[str, str]], summary: str) -> None:
    m = {"nodes": nodes, "reporting": sum(n["reporting"] for n in nodes), "unreachable_pairs": pairs}
    assert show.mesh(m)[-1].startswith(summary)
