"""Commands that talk to the bucket without a running agent: `ikto leave -c`, `ikto bucket`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from ikto import ipam, keys
from ikto.config import Config, load_config
from ikto.errors import UsageError
from ikto.membership import Removal, remove_entry
from ikto.store import BucketInfo, Store
from ikto.wg import Wg


async def leave_direct(config_path: Path, down: bool) -> None:
    """Remove our entry (only while it holds our public key), optionally the interface."""
    cfg = load_config(config_path)
    cfg.require_agent_fields()
    assert cfg.private_key_path is not None
    pub = keys.public_key(keys.read_private_key(cfg.private_key_path))
    key = ipam.peer_key(cfg.subnet)
    store = await Store.connect(cfg, name=f"ikto-leave {cfg.name}")
    try:
        await store.open_bucket(cfg.nats_kv, create=False)
        outcome = await remove_entry(store, key, pub, None)
    finally:
        await store.close()
    if outcome is Removal.ABSENT:
        print(f"ikto: no entry at {key}; nothing to remove", file=sys.stderr)
    elif outcome is Removal.NOT_OURS:
        raise UsageError(f"the entry at {key} belongs to another node now; not removing it")
    if down:
        await asyncio.to_thread(Wg(cfg.wg_dev_name).down, cfg.wg_config_path)


async def bucket_command(cfg: Config, max_consumers: int | None) -> BucketInfo:
    """The bucket's info, after setting its watch limit if asked."""
    store = await Store.connect(cfg, name=f"ikto-bucket {cfg.name}")
    try:
        await store.open_bucket(cfg.nats_kv, create=False)
        if max_consumers is not None:
            return await store.set_max_consumers(max_consumers)
        return await store.bucket_info()
    finally:
        await store.close()
