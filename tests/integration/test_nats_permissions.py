"""What `ikto nats-permissions` prints is a configuration both supported nats-servers accept.

(That it does what it says, agents working and other keys refused, is tests/faults/test_5_permissions.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ikto_lab.nats import find_binary
from ikto_lab.shell import LabError


@pytest.mark.parametrize("version", ["2.15", "2.9"])
def test_the_generated_block_is_a_valid_server_config(version: str, tmp_path: Path) -> None:
    try:
        binary = find_binary(version)
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    nodes = ["node1:PW1:198.19.11.0/24", 'node2:p"w\\2:fd10:6772:f964::/48']
    cp = subprocess.run(
        [sys.executable, "-m", "ikto", "nats-permissions", "--admin", "admin:ADMIN-PW", *nodes],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    conf = tmp_path / "ikto-auth.conf"
    conf.write_text(cp.stdout)
    check = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "is valid" in check.stdout + check.stderr
