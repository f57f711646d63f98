"""Who may import what: the pure core stays pure, NATS and the OS each have one seam."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ikto"
PURE = [
    "ikto.models", "ikto.ipam", "ikto.entry", "ikto.mesh", "ikto.reconcile", "ikto.render", "ikto.liveness",
    "ikto.paths", "ikto.records",
]


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_loads_no_settings_nats_or_shell(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pydantic_settings', 'nats', 'sh', 'aiohttp')); "
        "print(','.join(bad))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.strip()
    assert out == "", f"{module} loads {out}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_store_imports_nats_and_only_the_seam_runs_commands() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        names = _imports(path)
        if "nats" in names:
            assert rel.startswith("store/"), f"{rel} imports nats"
        if "sh" in names or "subprocess" in names:
            assert rel == "wg.py", f"{rel} runs commands outside the OS seam"
