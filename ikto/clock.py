"""The clocks the agent reads: monotonic and wall time here, and an estimate of the NATS
server's clock (bucket timestamps are the server's; a node's own clock may be skewed).

The only place liveness reads the time, so tests can inject another clock.
"""

from __future__ import annotations

import time
from datetime import datetime


class Clock:
    """Local clocks, and the server's clock estimated from timestamps of our own writes."""

    def __init__(self) -> None:
        self._skew: float | None = None  # local wall time minus server time

    def mono(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def server(self) -> float:
        """Now on the server's clock (our wall clock until a write told us the skew)."""
        return self.wall() - (self._skew or 0.0)

    @property
    def skew(self) -> float | None:
        """Seconds our wall clock is ahead of the server's (None: not measured yet)."""
        return self._skew

    def sample(self, server_stamp: datetime, sent: float, acked: float) -> None:
        """A write sent at `sent` and acknowledged at `acked` (our wall clock) was stamped
        `server_stamp` by the server: the skew is the midpoint minus the stamp."""
        self._skew = (sent + acked) / 2 - server_stamp.timestamp()
