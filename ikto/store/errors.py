"""Typed store errors, and the one place nats-py's exceptions are turned into them.

Callers match these types, never message text. Each message is one line a person can act on.
"""

from __future__ import annotations

import asyncio
import os

import nats.errors
import nats.js.errors

from ikto.errors import IktoError

# JetStream error codes (https://github.com/nats-io/nats-server/blob/main/server/errors.json):
_WRONG_LAST_SEQUENCE = (10071, 10164)  # the expected last subject sequence did not match
_STREAM_NOT_FOUND = 10059
_MAX_CONSUMERS = 10026  # maximum consumers limit reached
_CANNOT_CHANGE_MAX_CONSUMERS = 10052  # stream configuration update can not change MaxConsumers


class StoreError(IktoError):
    """The bucket or the NATS connection failed; the message says what and how to fix it."""


class KeyExistsError(StoreError):
    """create() found the key already there."""


class RevisionMismatchError(StoreError):
    """update() or delete(revision=) was given a revision that is no longer the key's latest."""


class PermissionDeniedError(StoreError):
    """The server refused an operation this NATS user may not do."""


class BucketNotFoundError(StoreError):
    """The bucket does not exist (never created, or deleted under us)."""


class ConsumerLimitError(StoreError):
    """The bucket's stream has as many consumers (watches) as it allows."""


def describe(err: BaseException, connect_timeout: float) -> str:
    """A short text for a nats-py exception (their str() is often empty or a repr)."""
    if isinstance(err, nats.js.errors.APIError):
        # Subclasses built by nats-py itself (KeyWrongLastSequenceError) lack err_code.
        desc = getattr(err, "description", None) or type(err).__name__
        code = getattr(err, "err_code", None)
        return f"{desc} (error {code})" if code else desc
    if isinstance(err, TimeoutError):  # also asyncio's; a connect attempt that hung
        return f"no answer within {connect_timeout:g} s"
    if isinstance(err, OSError):
        # asyncio's strerror is "Connect call failed (...)"; the errno says why.
        return os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
    text = str(err).removeprefix("nats: ").strip("'")
    return text or type(err).__name__


def translate(
    action: str,
    err: BaseException,
    *,
    bucket: str,
    timeout: float,
    connected: bool,
    recent_denial: str | None,
) -> StoreError:
    """The typed error for a failed nats-py call doing `action`."""
    code = getattr(err, "err_code", None) if isinstance(err, nats.js.errors.APIError) else None
    text = describe(err, timeout)
    if isinstance(err, nats.js.errors.KeyWrongLastSequenceError) or code in _WRONG_LAST_SEQUENCE:
        return RevisionMismatchError(f"NATS: {action}: revision mismatch ({text})")
    if isinstance(err, nats.js.errors.BucketNotFoundError) or code == _STREAM_NOT_FOUND:
        return BucketNotFoundError(f"NATS: {action}: bucket {bucket} does not exist ({text})")
    if code == _MAX_CONSUMERS:
        return ConsumerLimitError(
            f"NATS: {action}: bucket {bucket} allows no more watches ({text}); raise its limit with "
            f"`ikto bucket --max-consumers N` (nats-server 2.12.5+), or for buckets left at the "
            f"server's default set jetstream {{limits {{default_max_consumers: -1}}}} (2.15+)"
        )
    if code == _CANNOT_CHANGE_MAX_CONSUMERS:
        return StoreError(
            f"NATS: {action}: this nats-server cannot change a bucket's watch limit ({text}; before "
            "2.12.5); up to 2.14 it does not cap buckets left at -1, so back up and restore the "
            "stream with the new limit (`nats stream backup`/`restore`) or upgrade the server"
        )
    if isinstance(err, nats.errors.NoRespondersError):
        return StoreError(f"NATS: {action}: no JetStream on the server (start nats-server with -js)")
    if isinstance(err, asyncio.TimeoutError):
        hint = "is the server reachable and JetStream healthy?"
        if recent_denial:
            hint = f"the server recently said: {recent_denial}"
        state = "" if connected else " while disconnected"
        return StoreError(f"NATS: {action}: timed out after {timeout:g} s{state} ({hint})")
    return StoreError(f"NATS: {action}: {text}")
