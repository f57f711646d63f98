"""Which endpoint WireGuard should use for each peer: the one that works, else candidates in turn.

WireGuard learns a peer's endpoint from every authenticated packet (roaming). That endpoint is
a fact and is kept while the session works; the bucket's endpoints are only candidates to try
when nothing works. See docs/liveness.md "Endpoints".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address

from ikto import ipam
from ikto.ipam import Address, Network
from ikto.models import Peer, WgDevice, endpoint_text

# Per candidate. A peer being tried is re-added with its new endpoint, which makes WireGuard
# send a handshake at once (an endpoint change alone waits for the 5 s retry): an answer comes
# in milliseconds on a LAN, well under a second across the internet (docs/facts.md).
TRY_SECONDS = 2.0
MAX_WAIT = 300.0  # between rounds that all failed, at most
MAX_CANDIDATES = 8  # what an entry may list (entry.MAX_ENDPOINTS)


def our_candidates(
    *,
    sighted: str | None,
    nats_sees: str | None,
    local: Iterable[Address],
    port: int,
    advertise: Address,
    mesh: Network,
) -> tuple[str, ...]:
    """The endpoints we publish beside our advertise address, most useful first: where other
    nodes see us, where the NATS server sees us connect from (with our WireGuard port: right
    behind a port-preserving NAT), then this host's own addresses."""
    out: list[str] = [sighted] if sighted else []
    addresses: list[Address] = []
    if nats_sees:
        with contextlib.suppress(ValueError):
            addresses.append(ip_address(nats_sees))
    addresses += local
    for a in addresses:
        if not ipam.unusable_endpoint_reason(a) and a not in mesh and not a.is_loopback:
            out.append(endpoint_text(a, port))
    mine = endpoint_text(advertise, port)
    return tuple(e for e in dict.fromkeys(out) if e != mine)[:MAX_CANDIDATES]


def _host(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]


@dataclass(slots=True)
class Sighting:
    """Where other nodes see us (their witness reports), kept only while it stays true.

    - A report from the address we already know, at another port: our NAT gives each peer its
      own port (a symmetric NAT). No port is worth publishing then: peers behind NATs cannot
      reach us directly, open peers learn our endpoint from our packets anyway. Reports from
      that address are ignored from then on, so our entry is not rewritten for each of them.
    - The NATS server sees us from another address than when we learned it: we moved, and
      what was seen before is from the old network.
    """

    endpoint: str | None = None
    symmetric: str | None = None  # the address whose ports vary
    _nats: str | None = None  # where NATS saw us when we learned `endpoint`

    def update(self, report: str | None, nats_sees: str | None) -> str | None:
        """Take a witness report (None: no new one) and where NATS sees us now; the sighted
        endpoint to publish, if any."""
        if nats_sees and self._nats and nats_sees != self._nats:
            self.endpoint = self.symmetric = None
        self._nats = nats_sees or self._nats
        if report and report != self.endpoint and _host(report) != self.symmetric:
            if self.endpoint is not None and _host(report) == _host(self.endpoint):
                self.endpoint, self.symmetric = None, _host(report)
            else:
                self.endpoint = report
        return self.endpoint


@dataclass(slots=True)
class Trial:
    """Trying a peer's candidates: which one now, since when, how many rounds failed."""

    order: tuple[str, ...]
    index: int
    since: float  # monotonic
    rounds: int = 0
    resume_at: float | None = None  # waiting between rounds until then

    def endpoint(self) -> str:
        return self.order[0] if self.resume_at is not None else self.order[self.index]


def advance(trial: Trial, now: float) -> bool:
    """Move a trial on at `now`; True if the endpoint to try changed."""
    before = trial.endpoint()
    if trial.resume_at is not None:
        if now >= trial.resume_at:
            trial.resume_at, trial.index, trial.since = None, 0, now
    elif now - trial.since >= TRY_SECONDS:
        trial.index, trial.since = trial.index + 1, now
        if trial.index >= len(trial.order):
            trial.rounds += 1
            trial.index = 0
            trial.resume_at = now + min(TRY_SECONDS * 2**trial.rounds, MAX_WAIT)
    return trial.endpoint() != before


class Paths:
    """Owns the endpoint that last worked for each peer and the trials under way."""

    def __init__(
        self,
        mono: Callable[[], float],
        session_fresh: Callable[[str], bool],
        past_rhythm: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._mono = mono
        self._session_fresh = session_fresh
        self._past_rhythm = past_rhythm
        self._working: dict[str, str] = {}
        self._trials: dict[str, Trial] = {}
        self._moved: set[str] = set()  # quiet past their rhythm, at an endpoint they no longer list

    def _fresh(self, public_key: str) -> bool:
        """Does the session work? A session is trusted for its life (SESSION_FRESH), unless the
        peer went quiet past its rhythm and no longer lists the endpoint we hold for it: it moved
        (a new NAT mapping, a new address), and waiting out the session would cost minutes."""
        return self._session_fresh(public_key) and public_key not in self._moved

    @property
    def trying(self) -> bool:
        """Is some candidate being tried right now (not waiting between rounds)?"""
        return any(t.resume_at is None for t in self._trials.values())

    def want(self, peer: Peer) -> tuple[str, bool, bool]:
        """(the endpoint to give WireGuard, whether to keep the one it has instead, whether to
        re-add the peer to apply a new one: only while trying, when there is no session to lose)."""
        pk = peer.public_key
        if self._fresh(pk):
            return self._working.get(pk, peer.endpoint), True, False
        trial = self._trials.get(pk)
        if trial is not None:
            return trial.endpoint(), False, True
        working = self._working.get(pk)
        return working or peer.endpoint, False, False

    def observed(self, dev: WgDevice, peers: Iterable[Peer]) -> set[str]:
        """After a look at WireGuard: remember what works, start, move on or end trials.

        Returns the public keys whose wanted endpoint changed (they must be applied)."""
        now = self._mono()
        changed: set[str] = set()
        live = set()
        for peer in peers:
            pk = peer.public_key
            live.add(pk)
            have = dev.peers.get(pk)
            if have is None:
                continue
            if not self._past_rhythm(pk):  # heard lately: wherever it is, it works
                self._moved.discard(pk)
            elif pk not in self._moved and have.endpoint and have.endpoint not in peer.candidates():
                self._moved.add(pk)  # until it is heard again, even while we try its candidates
                self._working.pop(pk, None)  # the endpoint it moved away from: not worth a try
            if self._fresh(pk):
                if have.endpoint:
                    self._working[pk] = have.endpoint
                self._trials.pop(pk, None)
                continue
            order = tuple(dict.fromkeys(x for x in (self._working.get(pk), *peer.candidates()) if x))
            trial = self._trials.get(pk)
            if trial is None or trial.order != order:
                if len(order) < 2:
                    self._trials.pop(pk, None)
                    continue
                trial = self._trials[pk] = Trial(order, 0, now)
                if have.endpoint != trial.endpoint():
                    changed.add(pk)
            elif advance(trial, now):
                changed.add(pk)
        for gone in self._trials.keys() - live:
            del self._trials[gone]
        for gone in self._working.keys() - live:
            del self._working[gone]
        self._moved &= live
        return changed

    def describe(self, public_key: str) -> str:
        """How we reach a peer, for `ikto status`."""
        if self._fresh(public_key):
            return "direct"
        t = self._trials.get(public_key)
        if t is None:
            return "no session"
        if t.resume_at is None:
            return f"trying {t.index + 1}/{len(t.order)}"
        return f"no direct path ({t.rounds} rounds of {len(t.order)} candidates)"
