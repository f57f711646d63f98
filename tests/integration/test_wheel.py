"""The wheel is the product: built from this tree it holds ikto and its templates, nothing else.

No lab (ikto_lab, ikto/lab), no tests, no benchmarks: `pip install ikto` on a production host
must not bring tools that only we use.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_ikto_and_its_metadata(tmp_path: Path) -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (wheel,) = tmp_path.glob("ikto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert dist_info.startswith("ikto-")
    assert {n.split("/")[0] for n in names} == {"ikto", dist_info}
    assert not [n for n in names if n.startswith(("ikto/lab/", "ikto_lab", "tests/", "bench/"))]
    assert not [n for n in names if "/tests/" in n or "/bench/" in n or n.endswith("conftest.py")]
    # The product itself is there: the CLI, the agent, the template the agent renders.
    for needed in ("ikto/cli.py", "ikto/agent.py", "ikto/natsauth.py", "ikto/templates/wg-quick.conf.j2"):
        assert needed in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "ikto = ikto.cli:main" in entry_points and "ikto-lab" not in entry_points
