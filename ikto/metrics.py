"""Prometheus metrics: WireGuard series named as mdlayher/wireguard_exporter names them (so its
dashboards and alerts work), and ikto's own `ikto_*` series.

Nothing here reads the agent: the agent takes a `Sample` of its parts on the event loop (from
the last look at WireGuard: no `wg show` per scrape), and `render` turns it into the text
format in a worker thread, so a scrape never stalls the loop for longer than taking the sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import ikto

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("ok", "pending", "stale", "expired")
APPLY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Latency:
    """A histogram of durations (seconds), kept by the part that measures them. Pure."""

    def __init__(self, buckets: tuple[float, ...] = APPLY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs as Prometheus wants them, +Inf last."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


@dataclass(frozen=True, slots=True)
class PeerSample:
    public_key: str
    name: str
    allowed_ips: str
    endpoint: str
    rx_bytes: int
    tx_bytes: int
    last_handshake: int  # UNIX time, 0 if never


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything a scrape shows, taken at once on the event loop."""

    device: str
    public_key: str
    peers: tuple[PeerSample, ...]
    states: dict[str, int]
    rejected: int
    nats_connected: bool
    snapshot_loaded: bool
    watch_refused: bool
    revision: int  # the newest bucket revision applied
    wg_calls: int
    apply_errors: int
    apply_latency: Latency
    presence_writes: int
    presence_failures: int
    witness_writes: int
    record_reads: int
    watch_rebuilds: dict[str, int] = field(default_factory=dict)
    peer_count: int = 0  # peers in WireGuard (`peers` lists them only when they are shown)


# Per-peer series by default up to this many peers: above, a scrape costs tenths of a second of
# CPU and Prometheus thousands of series per node (docs/metrics.md, "Cost").
AUTO_PER_PEER_MAX = 1000


class _SampleCollector(Collector):
    def __init__(self, per_peer: bool | None) -> None:
        self.per_peer = per_peer  # None: while the mesh has at most AUTO_PER_PEER_MAX peers
        self.sample: Sample | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.sample
        if s is None:
            return
        per_peer = self.per_peer if self.per_peer is not None else s.peer_count <= AUTO_PER_PEER_MAX
        yield from _wireguard(s, per_peer)
        yield from _ikto(s)


def _wireguard(s: Sample, per_peer: bool) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "wireguard_device_info", "Metadata about a device.", labels=["device", "public_key"]
    )
    info.add_metric([s.device, s.public_key], 1.0)
    yield info
    if not per_peer:
        return
    peer_info = GaugeMetricFamily(
        "wireguard_peer_info", "Metadata about a peer. The value is always 1.",
        labels=["device", "public_key", "allowed_ips", "endpoint", "name"],
    )
    rx = CounterMetricFamily(
        "wireguard_peer_receive_bytes", "Bytes received from the peer.", labels=["device", "public_key"]
    )
    tx = CounterMetricFamily(
        "wireguard_peer_transmit_bytes", "Bytes sent to the peer.", labels=["device", "public_key"]
    )
    hs = GaugeMetricFamily(
        "wireguard_peer_last_handshake_seconds",
        "UNIX time of the peer's last handshake, 0 if never.", labels=["device", "public_key"],
    )
    for p in s.peers:
        peer_info.add_metric([s.device, p.public_key, p.allowed_ips, p.endpoint, p.name], 1.0)
        rx.add_metric([s.device, p.public_key], float(p.rx_bytes))
        tx.add_metric([s.device, p.public_key], float(p.tx_bytes))
        hs.add_metric([s.device, p.public_key], float(p.last_handshake))
    yield from (peer_info, rx, tx, hs)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _ikto(s: Sample) -> Iterable[Metric]:
    build = InfoMetricFamily("ikto_build", "The running ikto.")
    build.add_metric([], {"version": ikto.__version__})
    yield build
    peers = GaugeMetricFamily("ikto_peers", "Peers in the bucket by liveness state.", labels=["state"])
    for state in STATES:
        peers.add_metric([state], float(s.states.get(state, 0)))
    yield peers
    yield _gauge("ikto_rejected_entries", "Bucket entries skipped as invalid or in conflict.", s.rejected)
    yield _gauge("ikto_nats_connected", "1 while connected to NATS.", float(s.nats_connected))
    yield _gauge("ikto_snapshot_loaded", "1 once the bucket was read and applied.", float(s.snapshot_loaded))
    yield _gauge("ikto_watch_refused", "1 while the bucket refuses our watch.", float(s.watch_refused))
    yield _gauge("ikto_bucket_revision_applied", "The newest bucket revision applied.", s.revision)
    yield _counter("ikto_wg_calls", "wg commands that changed peers.", s.wg_calls)
    yield _counter("ikto_apply_errors", "Failed attempts to change peers.", s.apply_errors)
    h = HistogramMetricFamily("ikto_apply_duration_seconds", "Time one change of peers took (the wg call).")
    h.add_metric([], s.apply_latency.cumulative(), sum_value=s.apply_latency.sum)
    yield h
    writes = CounterMetricFamily("ikto_presence_writes", "Writes of our presence record.", labels=["result"])
    writes.add_metric(["ok"], float(s.presence_writes))
    writes.add_metric(["failed"], float(s.presence_failures))
    yield writes
    yield _counter("ikto_witness_writes", "Witness records written for other nodes.", s.witness_writes)
    yield _counter("ikto_record_reads", "Presence and witness records read on demand.", s.record_reads)
    rebuilds = CounterMetricFamily("ikto_watch_rebuilds", "Watches rebuilt from a fresh snapshot.",
                                   labels=["reason"])
    for reason, n in sorted(s.watch_rebuilds.items()):
        rebuilds.add_metric([reason], float(n))
    yield rebuilds


class Metrics:
    """Owns the registry; `update` swaps in the latest sample, `render` formats it (any thread)."""

    def __init__(self, per_peer: bool | None) -> None:
        self._collector = _SampleCollector(per_peer)
        self.per_peer_setting = per_peer
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)

    def wants_peers(self, peers: int) -> bool:
        """Will a scrape show per-peer series with this many peers (else: no need to list them)?"""
        setting = self.per_peer_setting
        return setting if setting is not None else peers <= AUTO_PER_PEER_MAX

    def update(self, sample: Sample) -> None:
        self._collector.sample = sample  # one reference swap: a render in a thread sees old or new

    def render(self) -> bytes:
        return generate_latest(self.registry)
