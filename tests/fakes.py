"""A fake of the OS seam (ikto.wg.Wg): records every call, holds peers like WireGuard would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ikto import keys
from ikto.models import Plan, WgDevice, WgPeer
from ikto.reconcile import applied


class FakeWg:
    def __init__(self, dev: str = "wg-ikto") -> None:
        self.dev = dev
        self.calls: list[tuple[str, Any]] = []
        self.up_ = False
        self.peers: dict[str, WgPeer] = {}
        self.addrs: list[Any] = []

    def public_key(self, private_b64: str) -> str:
        return keys.public_key(private_b64)

    def exists(self) -> bool:
        return self.up_

    def up(self, conf_path: Path) -> None:
        self.calls.append(("up", conf_path))
        self.up_ = True

    def down(self, conf_path: Path) -> None:
        self.calls.append(("down", conf_path))
        self.up_ = False
        self.peers.clear()

    def delete(self) -> None:
        self.calls.append(("delete", None))
        self.up_ = False
        self.peers.clear()

    def configure(self, listen_port: int, private_key_path: Path) -> None:
        self.calls.append(("configure", listen_port))

    def addresses(self) -> list[Any]:
        return list(self.addrs)

    def ensure_address(self, iface: Any, mtu: int | None) -> None:
        if iface not in self.addrs:
            self.addrs.append(iface)

    def remove_address(self, iface: Any) -> None:
        self.addrs.remove(iface)

    def dump(self) -> WgDevice:
        return WgDevice("pub", 51820, 0, dict(self.peers))

    def apply(self, plan: Plan) -> None:
        self.calls.append(("apply", plan))
        applied(plan, self.peers)

    def syncconf(self, text: str) -> None:
        self.calls.append(("syncconf", len(text)))
        raise NotImplementedError("tests keep plans below the syncconf threshold")

    def applies(self) -> list[Plan]:
        return [c[1] for c in self.calls if c[0] == "apply"]


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until cond() is true (polling every 20 ms), or fail the test."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")
