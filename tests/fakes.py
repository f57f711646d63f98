"""A fake of the OS seam (ikto.wg.WgApi): records every call, holds peers like WireGuard would.

Typed against the real seam's Protocol (mypy checks it in `make lint`), so it cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ikto import keys
from ikto.clock import Clock
from ikto.ipam import Interface, Network
from ikto.models import Link, Plan, WgDevice, WgPeer
from ikto.reconcile import applied
from ikto.wg import WgApi


class FakeWg:
    def __init__(self, dev: str = "wg-ikto") -> None:
        self.dev = dev
        self.calls: list[tuple[str, Any]] = []
        self.up_ = False
        self.link_up = False
        self.mtu = 1420
        self.listen_port = 0
        self.key = ""
        self.peers: dict[str, WgPeer] = {}
        self.addrs: list[Interface] = []
        self.host_addrs: list[Interface] = []
        self.routed: list[Network] = []

    def public_key(self, private_b64: str) -> str:
        return keys.public_key(private_b64)  # like `wg pubkey`: the device is not touched

    def link(self) -> Link | None:
        return Link(self.dev, self.link_up, self.mtu) if self.up_ else None

    def exists(self) -> bool:
        return self.up_

    def up(self, conf_path: Path) -> None:
        self.calls.append(("up", conf_path))
        self.up_ = self.link_up = True
        self.listen_port = 51820
        for line in Path(conf_path).read_text().splitlines():  # as wg-quick would
            if line.startswith("PrivateKey = "):
                self.key = keys.public_key(line.split(" = ", 1)[1])

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
        self.listen_port = listen_port
        self.key = keys.public_key(Path(private_key_path).read_text())

    def addresses(self) -> list[Interface]:
        return list(self.addrs)

    def host_addresses(self) -> list[Interface]:
        return list(self.host_addrs)

    def add_address(self, iface: Interface) -> None:
        self.calls.append(("add_address", iface))
        self.addrs.append(iface)

    def remove_address(self, iface: Interface) -> None:
        self.calls.append(("remove_address", iface))
        self.addrs.remove(iface)

    def set_link_up(self, mtu: int | None) -> None:
        self.calls.append(("set_link_up", mtu))
        self.link_up = True
        if mtu is not None:
            self.mtu = mtu

    def routes(self) -> list[Network]:
        return list(self.routed)

    def add_route(self, net: Network) -> None:
        self.calls.append(("add_route", net))
        if net not in self.routed:
            self.routed.append(net)

    def del_route(self, net: Network) -> None:
        self.calls.append(("del_route", net))
        if net in self.routed:
            self.routed.remove(net)

    def dump(self) -> WgDevice:
        return WgDevice(self.key, self.listen_port, 0, dict(self.peers))

    def apply(self, plan: Plan) -> None:
        self.calls.append(("apply", plan))
        applied(plan, self.peers)

    def syncconf(self, wg_conf_text: str) -> None:
        self.calls.append(("syncconf", len(wg_conf_text)))
        raise NotImplementedError("tests keep plans below the syncconf threshold")

    def applies(self) -> list[Plan]:
        return [c[1] for c in self.calls if c[0] == "apply"]


def _typed(fake: FakeWg) -> WgApi:
    return fake  # mypy: FakeWg must satisfy the real seam's Protocol


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until cond() is true (polling every 20 ms), or fail the test."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


class FakeClock(Clock):
    """A clock for tests: time moves only when told to."""

    def __init__(self, mono: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        super().__init__()
        self.now_mono = mono
        self.now_wall = wall

    def mono(self) -> float:
        return self.now_mono

    def wall(self) -> float:
        return self.now_wall

    def advance(self, seconds: float) -> None:
        self.now_mono += seconds
        self.now_wall += seconds
