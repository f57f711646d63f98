"""Pings that run in the background for minutes: loss and outages between two lab nodes.

`ping -D -i 0.2` runs inside the source node (its output goes to a file: minutes of replies
would fill a pipe); stop() interrupts it and reads which sequence numbers were answered.
parse() is pure: the loss, and the longest run of unanswered pings (an outage).
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ikto_lab.shell import LabError, spawn

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
_SUMMARY = re.compile(r"^(\d+) packets transmitted, (\d+) received")
WAIT = 1.0  # seconds a reply may take (ping -W): pings sent this close to the stop are not counted


@dataclass(frozen=True)
class PingResult:
    """What a run of pings showed: counted ones (the last WAIT s left out), lost, outages."""

    interval: float
    counted: int
    lost: int
    longest_outage_s: float  # the longest run of consecutive lost pings, in seconds
    outages: tuple[tuple[float, float], ...]  # (seconds after the first ping, length in seconds)
    longest_gap_s: float = 0.0  # the longest time between two consecutive replies (-D stamps)

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.counted if self.counted else 100.0

    @property
    def seconds(self) -> float:
        return self.counted * self.interval

    def summary(self) -> str:
        return (
            f"{self.lost}/{self.counted} lost ({self.loss_pct:.2f} %) over {self.seconds:.0f} s, "
            f"longest outage {self.longest_outage_s:.1f} s"
        )


def parse(output: str, interval: float) -> PingResult:
    """Read `ping -D -i <interval>` output: replies by sequence number, and the summary."""
    answered: set[int] = set()
    stamps: list[float] = []
    transmitted: int | None = None
    for ln in output.splitlines():
        if m := _REPLY.match(ln):
            answered.add(int(m.group(2)))
            stamps.append(float(m.group(1)))
        elif m := _SUMMARY.match(ln):
            transmitted = int(m.group(1))
    if transmitted is None:
        transmitted = max(answered, default=0)
    tail = math.ceil(WAIT / interval)
    last = max(0, transmitted - tail)
    lost = [s for s in range(1, last + 1) if s not in answered]
    outages: list[tuple[float, float]] = []
    run_start = prev = None
    for s in [*lost, None]:
        if s is not None and prev is not None and s == prev + 1:
            prev = s
            continue
        if run_start is not None and prev is not None:
            outages.append(((run_start - 1) * interval, (prev - run_start + 1) * interval))
        run_start = prev = s
    longest = max((length for _, length in outages), default=0.0)
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
    return PingResult(interval, last, len(lost), round(longest, 3), tuple(outages), round(gap, 3))


class Pinger:
    """Pings from one node to an address in the background, until stop()."""

    def __init__(self, argv_in_node: Sequence[str], address: str, log: Path, interval: float = 0.2) -> None:
        """argv_in_node: the prefix that runs a command inside the source node (NamespaceLab.node_argv)."""
        self.interval = interval
        self.log = log
        argv = [*argv_in_node, "ping", "-n", "-D", "-i", f"{interval:g}", "-W", f"{WAIT:g}", address]
        log.unlink(missing_ok=True)
        self._proc: subprocess.Popen[bytes] | None = spawn(argv, log)
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> PingResult:
        """Interrupt ping (it prints its summary) and read what it saw."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            raise LabError(f"reading the pings' output {self.log}: {e}") from None
        return parse(text, self.interval)
