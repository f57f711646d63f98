"""The rendered wg-quick file: rewritten after the mesh settles, and on stop.

The file is for reboots and for people, not for WireGuard (the agent applies changes with
`wg set`): rewriting 10k peers costs 60-190 ms of the GIL, which showed up in the p99 of
one-peer changes (docs/benchmarks.md, P1). So it is written after WRITE_QUIET seconds without
changes, and at least every WRITE_MAX_DELAY under constant churn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from ikto.files import write_atomic
from ikto.log import fields

log = logging.getLogger("ikto.agent")

WRITE_QUIET = 5.0
WRITE_MAX_DELAY = 60.0


class FileWriter:
    """Owns when the rendered file is written.

    `prepare` runs on the event loop and takes what the file needs (the peers right now); the
    function it returns renders the text in a worker thread.
    """

    def __init__(self, path: Callable[[], Path], prepare: Callable[[], Callable[[], str]]) -> None:
        self._path = path
        self._prepare = prepare
        self._due: float | None = None  # loop time the file is due
        self._since: float | None = None  # first unwritten change
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """The mesh changed: write the file once things are quiet (or too long unwritten)."""
        now = asyncio.get_running_loop().time()
        if self._since is None:
            self._since = now
        self._due = min(now + WRITE_QUIET, self._since + WRITE_MAX_DELAY)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write_when_due())

    @property
    def pending(self) -> bool:
        return self._due is not None

    async def flush(self) -> None:
        """Write now if a change is pending (on stop: a restart or reboot finds the latest mesh)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await self.write()

    async def _write_when_due(self) -> None:
        loop = asyncio.get_running_loop()
        while self._due is not None and (delay := self._due - loop.time()) > 0:
            await asyncio.sleep(delay)
        await self.write()

    async def write(self) -> None:
        """Render and write the file atomically (0600: it holds the private key)."""
        self._due = self._since = None
        path, render = self._path(), self._prepare()
        try:
            await asyncio.to_thread(lambda: write_atomic(path, render(), mode=0o600))
        except OSError as e:
            log.error("writing the rendered config failed", extra=fields(path=str(path), error=e))
