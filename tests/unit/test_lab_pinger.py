"""Reading minutes of `ping -D -i 0.2` output: loss and outages (ikto_lab.pinger.parse)."""

from __future__ import annotations

from ikto_lab.pinger import parse


def ping_output(answered: list[int], transmitted: int) -> str:
    lines = ["PING 198.19.1.0 (198.19.1.0) 56(84) bytes of data."]
    reply = "[1764470400.{:06d}] 64 bytes from 198.19.1.0: icmp_seq={} ttl=64 time=0.210 ms"
    lines += [reply.format(s, s) for s in answered]
    lines += ["", "--- 198.19.1.0 ping statistics ---",
              f"{transmitted} packets transmitted, {len(answered)} received, 1% packet loss, time 1999ms"]
    return "\n".join(lines) + "\n"


def test_no_loss_and_the_last_second_is_not_counted() -> None:
    # 100 sent, the last 5 (one second at 0.2 s) still in flight when ping was stopped.
    r = parse(ping_output(list(range(1, 96)), 100), 0.2)
    assert (r.counted, r.lost, r.loss_pct, r.longest_outage_s, r.outages) == (95, 0, 0.0, 0.0, ())


def test_outages_are_runs_of_lost_pings() -> None:
    lost = {10, 11, 12, 50}
    r = parse(ping_output([s for s in range(1, 101) if s not in lost], 100), 0.2)
    assert (r.counted, r.lost) == (95, 4)
    assert [(round(a, 3), round(b, 3)) for a, b in r.outages] == [(1.8, 0.6), (9.8, 0.2)]
    assert r.longest_outage_s == 0.6
    assert round(r.loss_pct, 2) == 4.21


def test_duplicates_and_a_missing_summary() -> None:
    text = ping_output([1, 2, 2, 3], 4).split("\n---")[0]  # killed: no summary
    r = parse(text, 0.2)
    assert (r.counted, r.lost) == (0, 0)  # three answered, all within the last second
    assert parse("", 0.2).loss_pct == 100.0


def test_the_longest_gap_between_two_replies() -> None:
    reply = "[{:.6f}] 64 bytes from fd10::1: icmp_seq={} ttl=64 time=0.2 ms"
    stamps = [100.00, 100.01, 100.02, 100.35, 100.36]
    text = "\n".join(reply.format(t, i + 1) for i, t in enumerate(stamps))
    assert parse(text, 0.01).longest_gap_s == 0.33
