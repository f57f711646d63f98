"""Per-peer WireGuard series: on or off as configured; unset, on up to AUTO_PER_PEER_MAX peers."""

from __future__ import annotations

import pytest

from ikto.metrics import AUTO_PER_PEER_MAX, Latency, Metrics, PeerSample, Sample


def sample(peers: int) -> Sample:
    listed = tuple(PeerSample(f"K{i}", f"n{i}", "fd10:1::/48", "", 0, 0, 0) for i in range(peers))
    counters = dict(wg_calls=0, apply_errors=0, presence_writes=0, presence_failures=0, witness_writes=0,
                    record_reads=0)  # fmt: skip
    return Sample("wg-ikto", "ME", listed, {"ok": peers}, 0, True, True, False, 1, apply_latency=Latency(),
                  peer_count=peers, **counters)  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "peers", "per_peer"),
    [
        (None, 3, True),
        (None, AUTO_PER_PEER_MAX, True),
        (None, AUTO_PER_PEER_MAX + 1, False),
        (True, AUTO_PER_PEER_MAX + 1, True),
        (False, 3, False),
    ],
)
def test_per_peer_series(setting: bool | None, peers: int, per_peer: bool) -> None:
    m = Metrics(per_peer=setting)
    assert m.wants_peers(peers) is per_peer
    m.update(sample(peers))
    text = m.render().decode()
    assert "wireguard_device_info{" in text and "ikto_peers" in text
    assert ('wireguard_peer_info{' in text) is per_peer
