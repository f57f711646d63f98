"""Waiting on the agent's way to ready, always stoppable: retrying an operation against NATS
with jittered exponential backoff until it works, and waiting for a step while parts run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from ikto.log import fields
from ikto.store import StoreError

log = logging.getLogger("ikto.agent")
T = TypeVar("T")

FIRST_DELAY = 1.0
MAX_DELAY = 30.0


async def retrying(
    what: str,
    op: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    final: tuple[type[BaseException], ...] = (),
) -> T | None:
    """op()'s result, retrying StoreErrors (logged as `what`) until it works; None if stopped first.

    Errors of the `final` types are raised at once: waiting would not fix them.
    """
    delay = FIRST_DELAY
    while not stop.is_set():
        try:
            return await op()
        except final:
            raise
        except StoreError as e:
            log.warning(what, extra=fields(error=e, retry_in=delay))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, MAX_DELAY)
    return None


async def until(
    what: Awaitable[object], stop: asyncio.Event, tasks: Iterable[asyncio.Task[None]] = ()
) -> bool:
    """Wait for `what`; False if stopped first; a task that failed first raises its error here."""
    goal = asyncio.ensure_future(what)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([goal, stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        goal.cancel()
        stopped.cancel()
    for t in done:
        if t not in (goal, stopped) and (exc := t.exception()) is not None:
            raise exc
    return goal in done and not stop.is_set()
