"""Shared by every suite: test helpers in tests/ (fakes.py, badinputs.py) are importable, and
a failed lab test shows each node's agent log."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

LAB_FIXTURES = ("lab", "perm_lab")  # fixtures that hold a running lab (tests/e2e, tests/faults)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(autouse=True)
def _agent_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a lab test fails, print each node's agent log tail (pytest shows it with the failure)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    for name in LAB_FIXTURES:
        if name in request.fixturenames:
            lab = request.getfixturevalue(name)
            if getattr(lab, "is_up", lambda: True)():
                for node in lab.nodes():
                    print(f"\n----- agent log of {node} -----\n{lab.log_tail(node, 40)}")
