"""Retrying an operation against NATS with jittered exponential backoff until it works or we stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
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
