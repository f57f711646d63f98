"""Finding and stopping lab processes by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself hold ") ".
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid is gone or timeout passes; return those still alive."""
    left = [p for p in pids if alive(p)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send sig to every pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM the pids, then SIGKILL whatever is still alive after grace seconds."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    signal_pids(pids, signal.SIGTERM)
    left = wait_gone(pids, grace)
    if left:
        signal_pids(left, signal.SIGKILL)
        wait_gone(left, 5.0)
