"""An operator's connection to the lab's bucket, run inside the lab (the host cannot reach NATS).

`python -m ikto_lab.admin --url URLS --bucket B COMMAND ...` prints one JSON document on
stdout; the lab runs it in its admin netns (NamespaceLab.admin). It speaks to NATS only
through ikto.store, like the agent. Fake entries (name `fake-*`) stand in for many peers:
valid entries whose endpoints lead nowhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from collections.abc import Awaitable
from ipaddress import IPv4Address, ip_network
from typing import Any

from ikto import ipam
from ikto.config import load_config
from ikto.store import Store, StoreError

FAKE_PREFIX = "fake-"
BATCH = 250  # writes in flight at once


async def _open(args: argparse.Namespace, *, create: bool = False) -> Store:
    config = load_config(None, nats_url=args.url, nats_kv=args.bucket, name="lab-admin")
    store = await Store.connect(config, name="ikto-lab admin")
    try:
        await store.open_bucket(args.bucket, create=create, replicas=args.replicas)
    except BaseException:
        await store.close()
        raise
    return store


async def _snapshot(store: Store) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    watch = store.watch("peers.*")
    try:
        while (e := await asyncio.wait_for(anext(watch), 30)) is not None:
            if e.operation != "PUT" or e.value is None:
                out.pop(e.key, None)
                continue
            try:
                value: Any = json.loads(e.value)
            except ValueError:
                value = e.value.decode(errors="replace")
            out[e.key] = {
                "value": value,
                "revision": e.revision,
                "created": e.created.isoformat() if e.created else None,
            }
    finally:
        await watch.aclose()
    return out


async def _gather(ops: list[Awaitable[int]]) -> None:
    for i in range(0, len(ops), BATCH):
        await asyncio.gather(*ops[i : i + BATCH])


def _fake(allowed: str, n: int, port: int) -> dict[str, Any]:
    return {
        "name": f"{FAKE_PREFIX}{n}",
        "public_key": base64.b64encode(os.urandom(32)).decode(),
        "advertise_address": str(IPv4Address("198.18.128.0") + n),
        "allowed_ip": allowed,
        "wg_port": port,
    }


async def run(args: argparse.Namespace) -> Any:
    if args.cmd == "create-bucket":
        # A new cluster first has to learn its peers (until then: "no suitable peers for
        # placement"), then the R3 stream elects its leader: retry until it takes a write.
        deadline = time.monotonic() + 60
        while True:
            store = None
            try:
                store = await _open(args, create=True)
                await store.put("lab.ready", b"1")
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
            finally:
                if store is not None:
                    await store.close()
        return {"ok": True}
    store = await _open(args)
    try:
        if args.cmd == "delete-bucket":
            await store.delete_bucket(args.bucket)
            return {"ok": True}
        if args.cmd == "dump":
            return await _snapshot(store)
        if args.cmd == "stream-info":
            ident, last = await store.stream_info()
            return {"ident": ident, "last": last}
        if args.cmd == "put":
            return {"revision": await store.put(args.key, args.value.encode())}
        if args.cmd == "delete":
            await store.delete(args.key)
            return {"ok": True}
        if args.cmd == "burst":
            # args.keys fake peers on subnets nobody holds, each rewritten args.rounds times
            # (a new port each round): keys x rounds writes, as fast as the server takes them.
            taken = set(await _snapshot(store))
            mesh = ip_network(args.mesh)
            free = [
                s
                for s in mesh.subnets(new_prefix=args.prefix)
                if ipam.peer_key(s) not in taken and s.network_address != mesh.network_address
            ]
            random.shuffle(free)
            if len(free) < args.keys:
                raise SystemExit(f"only {len(free)} free subnets for {args.keys} fake peers")
            fakes = [_fake(str(s), i, 1000) for i, s in enumerate(free[: args.keys])]
            t0 = time.monotonic()
            for r in range(args.rounds):
                ops: list[Awaitable[int]] = []
                for f in fakes:
                    f["wg_port"] = 1000 + r
                    ops.append(store.put(ipam.peer_key(ip_network(f["allowed_ip"])), json.dumps(f).encode()))
                await _gather(ops)
            return {"writes": args.keys * args.rounds, "seconds": round(time.monotonic() - t0, 2)}
        if args.cmd == "delete-fakes":
            snap = await _snapshot(store)
            doomed = [
                k
                for k, v in snap.items()
                if isinstance(v["value"], dict) and str(v["value"].get("name", "")).startswith(FAKE_PREFIX)
            ]
            await asyncio.gather(*(store.delete(k) for k in doomed))
            return {"deleted": len(doomed)}
        raise SystemExit(f"unknown command {args.cmd}")
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; its result as JSON on stdout, an error as one line on stderr."""
    p = argparse.ArgumentParser(prog="python -m ikto_lab.admin")
    p.add_argument("--url", required=True)
    p.add_argument("--bucket", default="ikto-mesh")
    p.add_argument("--replicas", type=int, default=1)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("create-bucket", "delete-bucket", "dump", "stream-info", "delete-fakes"):
        sub.add_parser(name)
    put = sub.add_parser("put")
    put.add_argument("key")
    put.add_argument("value")
    delete = sub.add_parser("delete")
    delete.add_argument("key")
    burst = sub.add_parser("burst")
    burst.add_argument("--keys", type=int, default=100)
    burst.add_argument("--rounds", type=int, default=50)
    burst.add_argument("--mesh", default="198.19.0.0/16")
    burst.add_argument("--prefix", type=int, default=24)
    args = p.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except StoreError as e:
        print(f"ikto: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
