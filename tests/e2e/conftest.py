"""The e2e lab: one lab per module, driven through LabDriver, always torn down.

IKTO_E2E_LAB picks the driver: `namespaces` (the default) or `vagrant` (VMs that
`make e2e-vagrant` boots). The suite needs root and wireguard-go, and says so instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikto_lab import LabDriver, NamespaceLab

STATE_DIR = Path(os.environ.get("IKTO_E2E_STATE_DIR", "/run/ikto-e2e"))
NODES = 3


def make_driver(kind: str) -> LabDriver:
    """The lab driver named by IKTO_E2E_LAB."""
    if kind == "namespaces":
        # Its own state dir and netns prefix, so it never touches a `make demo` lab.
        return NamespaceLab(STATE_DIR, name="ikto-e2e")
    if kind == "vagrant":
        # VMs from the top-level Vagrantfile (`make e2e-vagrant` boots them first).
        from ikto_lab.vagrant import VagrantLab

        return VagrantLab()
    raise pytest.UsageError(f"IKTO_E2E_LAB={kind!r}: known labs are: namespaces, vagrant")


# Per module, not per session: a module with a lab of its own (test_nat.py) then runs with no
# other lab's agents beside it on the machine's two cores.
@pytest.fixture(scope="module")
def lab() -> Iterator[LabDriver]:
    if os.geteuid() != 0:
        pytest.fail("the e2e suite needs root (network and mount namespaces, wireguard-go)")
    driver = make_driver(os.environ.get("IKTO_E2E_LAB", "namespaces"))
    driver.down()  # whatever a crashed run left behind
    try:
        driver.up(NODES)
        driver.wait_converged(60)
        yield driver
    finally:
        driver.down()
