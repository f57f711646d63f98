"""The agent never imports the lab: starting ikto loads no ikto_lab module (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _main(*argv: str) -> str:
    """A program doing what `python -m ikto ARGV` does."""
    return (
        "import runpy, sys\n"
        f"sys.argv = ['ikto', *{list(argv)!r}]\n"
        "try:\n"
        "    runpy.run_module('ikto', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
    )


# Each runs in a new interpreter, then prints the lab modules it loaded.
PROGRAMS = {
    "python -m ikto --help": _main("--help"),
    "python -m ikto agent --help": _main("agent", "--help"),
    "import ikto.cli, ikto.agent": "import ikto.cli, ikto.agent, ikto.api, ikto.store\n",
}
REPORT = (
    "import json, sys\n"
    "lab = [m for m in sys.modules if m.split('.')[0] == 'ikto_lab' or m.startswith('ikto.lab')]\n"
    "print(json.dumps(sorted(lab)))\n"
)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_ikto_loads_no_lab_module(name: str) -> None:
    cp = subprocess.run(
        [sys.executable, "-c", PROGRAMS[name] + REPORT], capture_output=True, text=True, timeout=60
    )
    assert cp.returncode == 0, cp.stderr
    *output, last = cp.stdout.strip().splitlines()
    assert json.loads(last) == [], f"{name} imported {last}"
    if name.startswith("python -m"):
        assert "Usage:" in "\n".join(output), cp.stdout  # the CLI really ran


def test_the_lab_is_importable_beside_it() -> None:
    """The check above means something: ikto_lab is installed in this environment (make venv)."""
    cp = subprocess.run([sys.executable, "-c", "import ikto_lab"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
