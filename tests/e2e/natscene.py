"""Helpers of the NAT suite (test_nat.py): background samplers, what agents say about a peer,
what their logs count, and how often trying candidates may change an endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ikto.paths import MAX_WAIT, TRY_SECONDS
from ikto_lab import NamespaceLab


class Sampler(threading.Thread):
    """Calls fn every `period` seconds in the background; keeps (seconds since start, result)."""

    def __init__(self, name: str, period: float, fn: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.period = period
        self.fn = fn
        self.started = time.monotonic()
        self.samples: list[tuple[float, Any]] = []
        self.errors: list[tuple[float, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            try:
                self.samples.append((round(t - self.started, 1), self.fn()))
            except Exception as e:  # a failed look is reported by the test, not lost with the thread
                self.errors.append((round(t - self.started, 1), repr(e)))
            self._halt.wait(max(0.0, self.period - (time.monotonic() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def wait_until(deadline: float) -> None:
    """Sleep until time.monotonic() reaches deadline."""
    time.sleep(max(0.0, deadline - time.monotonic()))


def agents(lab: NamespaceLab) -> list[str]:
    """Members whose ikto agent runs (not the v0.3 node)."""
    return [n for n in lab.members() if lab.agent_running(n)]


def peer_view(lab: NamespaceLab, node: str, peer: str) -> dict[str, Any]:
    """What `ikto status --json` on node says about peer (by name); {} if it lists no such peer."""
    for p in lab.agent_status(node)["peers"]:
        if p["name"] == peer:
            return dict(p)
    return {}


def settled_view(
    lab: NamespaceLab, node: str, peer: str, want: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """peer_view once `want` holds, or the last one after timeout: the agent learns what its
    WireGuard did at its next look (every 5 s in a small mesh), so what it shows may lag."""
    deadline = time.monotonic() + timeout
    while True:
        view = peer_view(lab, node, peer)
        if want(view) or time.monotonic() > deadline:
            return view
        time.sleep(1)


def log_lines(lab: NamespaceLab, node: str, msg: str, *, public_key: str | None = None) -> list[str]:
    """Lines of node's agent log with msg="<msg>" (and about public_key, if given)."""
    text = lab.layout.agent_log(node).read_text(errors="replace")
    found = [ln for ln in text.splitlines() if f'msg="{msg}"' in ln]
    if public_key is not None:
        found = [ln for ln in found if f'public_key="{public_key}"' in ln]
    return found


def host(endpoint: str | None) -> str | None:
    return endpoint.rpartition(":")[0] if endpoint else None


def max_endpoint_changes(window: float, candidates: int) -> int:
    """How often trying `candidates` endpoints may change a peer's endpoint within `window`
    seconds of the first try, backing off as ikto.paths does: one change per candidate per
    round (TRY_SECONDS each), then a pause of TRY_SECONDS * 2**rounds, at most MAX_WAIT."""
    t, rounds, changes = 0.0, 0, 0
    while t < window:
        changes += candidates
        rounds += 1
        t += candidates * TRY_SECONDS + min(TRY_SECONDS * 2**rounds, MAX_WAIT)
    return changes
