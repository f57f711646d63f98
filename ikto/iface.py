"""The WireGuard interface: what the host reports → the steps that bring it in line → applied.

`plan` is pure and tested from fixtures. `Interface.bring_up` observes, plans, applies, and
observes again after creating the interface (wg-quick sets what its file says).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ikto.config import Config
from ikto.files import write_atomic
from ikto.ipam import Interface as Address
from ikto.ipam import Network
from ikto.log import fields
from ikto.models import Link
from ikto.render import render
from ikto.wg import WgApi, WgError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Facts:
    """The interface as the host reports it."""

    link: Link | None
    conf_exists: bool  # the rendered file from an earlier run (the last known mesh)
    listen_port: int | None = None
    public_key: str | None = None
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Want:
    """The interface as this node's config describes it."""

    listen_port: int
    public_key: str
    address: Address
    mesh: Network
    mtu: int | None


@dataclass(frozen=True, slots=True)
class Up:
    """`wg-quick up` the rendered file; `from_last_mesh`: it is an earlier run's, with peers."""

    from_last_mesh: bool


@dataclass(frozen=True, slots=True)
class Configure:
    """Set the listen port and the private key."""


@dataclass(frozen=True, slots=True)
class RemoveAddress:
    address: Address


@dataclass(frozen=True, slots=True)
class AddAddress:
    address: Address


@dataclass(frozen=True, slots=True)
class LinkUp:
    mtu: int | None


Step = Up | Configure | RemoveAddress | AddAddress | LinkUp


def plan(facts: Facts, want: Want) -> list[Step]:
    """The steps that make the interface what `want` says; [] when it already is.

    A missing interface is created first (nothing else can be planned before it exists).
    Other addresses of the mesh's family inside the mesh are ours from an earlier subnet.
    """
    if facts.link is None:
        return [Up(from_last_mesh=facts.conf_exists)]
    steps: list[Step] = []
    if facts.listen_port != want.listen_port or facts.public_key != want.public_key:
        steps.append(Configure())
    for a in facts.addresses:
        if a.version == want.address.version and a.ip in want.mesh and a != want.address:
            steps.append(RemoveAddress(a))
    if want.address not in facts.addresses:
        steps.append(AddAddress(want.address))
    if not facts.link.up or (want.mtu is not None and facts.link.mtu != want.mtu):
        steps.append(LinkUp(want.mtu))
    return steps


class Interface:
    """Owns bringing up the WireGuard interface and keeping its address right."""

    def __init__(self, config: Config, private_key: str, public_key: str, wg: WgApi) -> None:
        self._config = config
        self._private_key = private_key
        self._public_key = public_key
        self._wg = wg

    def moved(self, config: Config) -> None:
        """Our subnet changed (the config says where to now)."""
        self._config = config

    def want(self) -> Want:
        c = self._config
        return Want(c.wg_port, self._public_key, c.interface_address, c.mesh_cidr, c.mtu)

    def observe(self) -> Facts:
        """What the host reports (three commands when the interface exists, one when not)."""
        link = self._wg.link()
        conf = self._config.wg_config_path.exists()
        if link is None:
            return Facts(None, conf)
        dev = self._wg.dump()
        return Facts(link, conf, dev.listen_port, dev.public_key, tuple(self._wg.addresses()))

    def bring_up(self) -> list[Step]:
        """Observe, plan and apply until nothing is left to do; the steps taken (blocking)."""
        taken: list[Step] = []
        for _ in range(3):
            steps = plan(self.observe(), self.want())
            if not steps:
                return taken
            for step in steps:
                self._apply(step)
            taken += steps
        return taken

    def ensure(self) -> None:
        """Bring the interface back if it was deleted, by hand or by a crash (blocking)."""
        if self._wg.link() is None:
            log.warning("interface is gone; bringing it up again", extra=fields(dev=self._wg.dev))
            self.bring_up()

    def _apply(self, step: Step) -> None:
        c = self._config
        path = c.wg_config_path
        match step:
            case Up(from_last_mesh=True):
                try:
                    self._wg.up(path)
                    log.info("interface up from the last known mesh", extra=fields(config=str(path)))
                except WgError as e:
                    log.warning("last rendered config did not come up; starting empty", extra=fields(error=e))
                    with contextlib.suppress(WgError):
                        self._wg.delete()
                    self._up_empty(path)
            case Up(from_last_mesh=False):
                self._up_empty(path)
                log.info("interface up", extra=fields(dev=c.wg_dev_name, config=str(path)))
            case Configure():
                assert c.private_key_path is not None
                self._wg.configure(c.wg_port, c.private_key_path)
            case RemoveAddress(address=a):
                self._wg.remove_address(a)
            case AddAddress(address=a):
                self._wg.add_address(a)
            case LinkUp(mtu=mtu):
                self._wg.set_link_up(mtu)

    def _up_empty(self, path: Path) -> None:
        write_atomic(path, render(self._config.local_node(), self._private_key, []))
        self._wg.up(path)
