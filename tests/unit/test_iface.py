"""Interface setup decided from what the host reports (pyinfra style: facts in, steps out),
and the bring-up paths run against the faked OS seam."""

from __future__ import annotations

from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest
from fakes import FakeWg

from ikto import keys
from ikto.config import load_config
from ikto.iface import AddAddress, Configure, Facts, Interface, LinkUp, RemoveAddress, Up, Want, plan
from ikto.models import Link
from ikto.wg import WgError

MESH = ip_network("fd10::/16")
ADDR = ip_interface("fd10:1::/16")
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
WANT = Want(listen_port=51820, public_key=PUB, address=ADDR, mesh=MESH, mtu=None)
UP = Link("wg-ikto", up=True, mtu=1420)


def facts(**over: object) -> Facts:
    base: dict[str, object] = dict(
        link=UP, conf_exists=True, listen_port=51820, public_key=PUB,
        addresses=(ADDR, ip_interface("fe80::1/64")),
    )
    base.update(over)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("f", "want", "steps"),
    [
        (facts(), WANT, []),  # nothing needs doing: a restart changes nothing
        (facts(link=None, conf_exists=True), WANT, [Up(from_last_mesh=True)]),
        (facts(link=None, conf_exists=False), WANT, [Up(from_last_mesh=False)]),
        (facts(listen_port=51999), WANT, [Configure()]),
        (facts(public_key="other"), WANT, [Configure()]),
        (facts(addresses=()), WANT, [AddAddress(ADDR)]),
        # moved: the old subnet's address goes, the new one comes; other families stay
        (
            facts(addresses=(ip_interface("fd10:9::/16"), ip_interface("10.0.0.1/8"))),
            WANT,
            [RemoveAddress(ip_interface("fd10:9::/16")), AddAddress(ADDR)],
        ),
        (facts(addresses=(ADDR, ip_interface("fd99::1/64"))), WANT, []),  # outside the mesh: not ours
        (facts(link=Link("wg-ikto", up=False, mtu=1420)), WANT, [LinkUp(None)]),
        (facts(), Want(51820, PUB, ADDR, MESH, mtu=1380), [LinkUp(1380)]),
        (facts(link=Link("wg-ikto", True, 1380)), Want(51820, PUB, ADDR, MESH, mtu=1380), []),
    ],
)
def test_plan(f: Facts, want: Want, steps: list[object]) -> None:
    assert plan(f, want) == steps


@pytest.fixture
def iface(tmp_path: Path) -> tuple[Interface, FakeWg, Path]:
    key = tmp_path / "private.key"
    private, _ = keys.write_private_key(key)
    cfg = load_config(
        None, advertise_address="198.18.0.1", private_address="fd10:1::", private_key_path=str(key),
        config_dir=str(tmp_path),
    )
    wg = FakeWg()
    return Interface(cfg, private, wg.public_key(private), wg), wg, cfg.wg_config_path


def test_bring_up_from_scratch_then_idempotent(iface: tuple[Interface, FakeWg, Path]) -> None:
    i, wg, path = iface
    steps = i.bring_up()
    assert steps[0] == Up(from_last_mesh=False) and AddAddress(ADDR) in steps
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    n = len(wg.calls)
    assert i.bring_up() == []  # the second run changes nothing
    assert len(wg.calls) == n


def test_bring_up_falls_back_to_an_empty_config(iface: tuple[Interface, FakeWg, Path]) -> None:
    i, wg, path = iface
    path.write_text("garbage from an earlier run")
    real_up = wg.up
    tries: list[str] = []

    def up(conf: Path) -> None:
        tries.append(conf.read_text())
        if len(tries) == 1:
            raise WgError(["wg-quick", "up", str(conf)], 1, "Line unrecognized: `garbage'")
        real_up(conf)

    wg.up = up  # type: ignore[method-assign]
    i.bring_up()
    assert tries[0] == "garbage from an earlier run"
    assert "[Interface]" in tries[1] and "[Peer]" not in tries[1]  # started empty
    assert ("delete", None) in wg.calls and wg.up_


def test_moved_fixes_the_address(iface: tuple[Interface, FakeWg, Path]) -> None:
    i, wg, _ = iface
    i.bring_up()
    cfg = i._config.model_copy(update={"private_address": ip_network("fd10:2::/48").network_address})
    i.moved(cfg)
    assert i.bring_up() == [RemoveAddress(ADDR), AddAddress(ip_interface("fd10:2::/16"))]
    assert wg.addrs == [ip_interface("fd10:2::/16")]


def test_ensure_brings_a_deleted_interface_back(iface: tuple[Interface, FakeWg, Path]) -> None:
    i, wg, _ = iface
    i.bring_up()
    i.ensure()
    ups = sum(c[0] == "up" for c in wg.calls)
    wg.delete()
    i.ensure()
    assert sum(c[0] == "up" for c in wg.calls) == ups + 1 and wg.up_
