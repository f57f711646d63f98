"""Replacing this node's WireGuard key while it runs, so that a crash at any step leaves a node
that comes back consistent.

The steps, in this order (the order keeps the interruption to about one entry update):

1. the new key is written beside the old one, `<key>.new` (0600, atomically);
2. the interface switches to it (`wg set <dev> private-key`): our sessions end;
3. our entry gets the new public key (compare-and-set): peers replace the old peer with the
   new one and, having traffic for us, handshake at once — we already hold the new key;
4. commit: `<key>.new` becomes `<key>` (an atomic rename; the old key is gone only now).

The commit is the rename. Until then the old key is on disk, and a node restarting after a
crash decides from the bucket (`recover`): if our entry already holds the new public key the
rotation is finished, else it is abandoned (`<key>.new` removed; the interface plan puts the
old key back, since the device's public key no longer matches the key file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

from ikto import entry, keys
from ikto.errors import IktoError
from ikto.models import PeerConfig, Plan
from ikto.wg import WgApi
from ikto.wgerrors import WgError

log = logging.getLogger("ikto.agent")

KEY_AGE_CHECK = 3600.0  # seconds between two looks at the key's age (rotate_key_days)
# After the switch: when to look for peers that did not handshake with the new key yet, and
# re-add them (docs/facts.md, "Key rotation and handshake collisions").
UNSTICK_AFTER = (0.5, 2.0)


class Recovery(StrEnum):
    NOTHING = "nothing"  # no rotation was under way
    COMMIT = "commit"  # our entry holds the new key: finish
    ABANDON = "abandon"  # it does not: forget the new key


def pending(key_path: Path) -> Path:
    """Where a rotation keeps the new key until it is committed."""
    return key_path.with_name(key_path.name + ".new")


def decide(new_public: str | None, entry_owner: str | None, old_public: str) -> Recovery:
    """What a restarting node does with an unfinished rotation (pure)."""
    if new_public is None:
        return Recovery.NOTHING
    if entry_owner == new_public:
        return Recovery.COMMIT
    if entry_owner in (old_public, None):
        return Recovery.ABANDON
    # Another node's key: not ours either way; keep the old key, the claim moves us.
    return Recovery.ABANDON


def write_new(key_path: Path) -> str:
    """Step 1: a fresh key in `<key>.new` (0600, atomic); the private key."""
    new = pending(key_path)
    private = keys.generate_private_key()
    tmp = new.with_name(new.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, new)
    _sync_dir(key_path.parent)
    return private


def commit(key_path: Path) -> None:
    """Step 4: the new key becomes the key (atomic rename)."""
    new = pending(key_path)
    if not new.exists():
        raise IktoError(f"no new key at {new} to commit")
    os.replace(new, key_path)
    _sync_dir(key_path.parent)


def abandon(key_path: Path) -> None:
    """Forget an unfinished rotation's key."""
    with contextlib.suppress(FileNotFoundError):
        pending(key_path).unlink()


Pubkey = Callable[[str], str]  # private -> public (the agent asks `wg pubkey`)


def new_public_key(key_path: Path, pubkey: Pubkey) -> str | None:
    """The public key of an unfinished rotation's key, if there is one."""
    new = pending(key_path)
    if not new.exists():
        return None
    return pubkey(keys.read_private_key(new))


def recover(key_path: Path, entry_value: bytes | None, old_public: str, pubkey: Pubkey) -> Recovery:
    """Finish or abandon a rotation a crash interrupted, from our entry in the bucket."""
    action = decide(new_public_key(key_path, pubkey), entry.owner(entry_value), old_public)
    if action is Recovery.COMMIT:
        commit(key_path)
        log.warning("finished a key rotation a restart interrupted", extra={"key_file": str(key_path)})
    elif action is Recovery.ABANDON:
        abandon(key_path)
        log.warning("abandoned a key rotation a restart interrupted", extra={"key_file": str(key_path)})
    return action


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Rotator:
    """Owns a rotation under way (one at a time): the steps above, against the OS seam and our
    entry (`rekey` writes the new public key into it)."""

    def __init__(
        self,
        key_path: Path,
        port: Callable[[], int],
        wg: WgApi,
        rekey: Callable[[str], Awaitable[None]],
    ) -> None:
        self._key = key_path
        self._port = port
        self._wg = wg
        self._rekey = rekey
        self._busy = False

    async def rotate(self) -> str:
        """Run steps 1-4; the new public key. On a failure before the commit, undo it."""
        if self._busy:
            raise IktoError("a key rotation is already under way")
        self._busy = True
        try:
            dev = await asyncio.to_thread(self._wg.dump)
            before = {p.public_key: p.latest_handshake for p in dev.peers.values()}
            private = await asyncio.to_thread(write_new, self._key)
            try:
                public = await asyncio.to_thread(self._wg.public_key, private)
                await asyncio.to_thread(self._wg.configure, self._port(), pending(self._key))
                await self._rekey(public)
            except BaseException:  # the bucket still has the old key: so must the interface
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._wg.configure, self._port(), self._key)
                abandon(self._key)
                raise
            await asyncio.to_thread(commit, self._key)
            await self._unstick(before)
            return public
        finally:
            self._busy = False

    async def _unstick(self, before: dict[str, int]) -> None:
        """Peers whose handshake has not changed since the switch may be stuck in a handshake
        collision until WireGuard retries (5 s): re-add them, which starts a handshake at once."""
        for delay in UNSTICK_AFTER:
            await asyncio.sleep(delay)
            try:
                dev = await asyncio.to_thread(self._wg.dump)
                stuck = [p for p in dev.peers.values() if p.latest_handshake == before.get(p.public_key)]
                if stuck:
                    configs = tuple(
                        PeerConfig(p.public_key, p.allowed_ips, p.endpoint or "", p.persistent_keepalive)
                        for p in stuck
                    )
                    await asyncio.to_thread(
                        self._wg.apply, Plan(set=configs, remove=tuple(c.public_key for c in configs))
                    )
                    log.info(
                        "re-added peers that had not handshaken with our new key", extra={"peers": len(stuck)}
                    )
            except WgError as e:
                log.warning("looking for peers stuck after the key switch failed", extra={"error": str(e)})

    async def when_old(self, days: float, rotate: Callable[[], Awaitable[object]]) -> None:
        """Call rotate() once the key file is `days` old (looked at every KEY_AGE_CHECK)."""
        while True:
            if time.time() - self._key.stat().st_mtime >= days * 86400:
                try:
                    await rotate()
                    return
                except IktoError as e:
                    log.warning("rotating the key failed; trying again later", extra={"error": str(e)})
            await asyncio.sleep(KEY_AGE_CHECK)

    async def recover_at_start(
        self, read_entry: Callable[[], Awaitable[bytes | None]], old_public: str
    ) -> bool:
        """At startup, before joining: finish or abandon a rotation a crash interrupted (from
        our entry, read with `read_entry`). True: the new key is ours, restart with it."""
        if not pending(self._key).exists():
            return False
        held = await read_entry()
        action = await asyncio.to_thread(recover, self._key, held, old_public, self._wg.public_key)
        return action is Recovery.COMMIT
