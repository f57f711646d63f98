"""The Vagrant lab driver: its inventory, and the exact commands it sends to the VMs.

The seam is `run` in ikto_lab.vagrant: a fake records every argv and answers from a script.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ikto_lab import vagrant
from ikto_lab.shell import CommandError, LabError, LabUsageError
from ikto_lab.vagrant import Inventory, VagrantLab

INVENTORY = {
    "version": 1,
    "nats_node": "node1",
    "nats_url": "nats://198.18.1.11:4222",
    "mesh_cidr": "198.19.0.0/16",
    "subnet_prefix": 24,
    "members": ["node1", "node2"],
    "spares": ["node3"],
    "nodes": {
        "node1": {"underlay": "198.18.1.11", "wireguard": "kernel"},
        "node2": {"underlay": "198.18.1.12", "wireguard": "userspace"},
        "node3": {"underlay": "198.18.1.13", "wireguard": "kernel"},
    },
}

Answer = Callable[[list[str]], tuple[int, str]]


class FakeRun:
    """Records argv lists; answers (returncode, stdout) by the first matching substring."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answers: list[tuple[str, int, str]] = []

    def answer(self, needle: str, rc: int = 0, out: str = "") -> None:
        self.answers.append((needle, rc, out))

    def __call__(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, **_: Any
    ) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        rc, out = 0, ""
        for needle, a_rc, a_out in self.answers:
            if needle in " ".join(argv):
                rc, out = a_rc, a_out
                break
        if check and rc:
            raise CommandError(argv, rc, "boom")
        return subprocess.CompletedProcess(argv, rc, out, "")

    def remote(self) -> list[str]:
        """The commands run on VMs, in order."""
        return [c[-1] for c in self.calls if c[0] == "ssh"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    f = FakeRun()
    monkeypatch.setattr(vagrant, "run", f)
    return f


@pytest.fixture
def lab(tmp_path: Path, fake: FakeRun, monkeypatch: pytest.MonkeyPatch) -> VagrantLab:
    (tmp_path / "Vagrantfile").write_text("")
    (tmp_path / ".vagrant").mkdir()
    (tmp_path / ".vagrant/ikto-inventory.json").write_text(json.dumps(INVENTORY))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lab = VagrantLab(tmp_path, slowdown=2)
    lab._ssh_dir = tmp_path / "ssh"
    lab._ssh_dir.mkdir()
    (lab._ssh_dir / "config").write_text("Host node1\n")
    return lab


def test_inventory_parses_what_the_vagrantfile_writes() -> None:
    inv = Inventory.from_json(json.dumps(INVENTORY))
    assert inv.machines == ["node1", "node2", "node3"]
    assert inv.underlay["node3"] == "198.18.1.13"
    assert inv.wireguard["node2"] == "userspace"


def test_inventory_errors_name_the_problem() -> None:
    bad = dict(INVENTORY, spares=["node9"])
    with pytest.raises(LabError, match="no address for node9"):
        Inventory.from_json(json.dumps(bad))
    with pytest.raises(LabError, match="not an inventory"):
        Inventory.from_json("{}")


def test_missing_inventory_says_how_to_make_the_vms(tmp_path: Path) -> None:
    (tmp_path / "Vagrantfile").write_text("")
    with pytest.raises(LabUsageError, match="vagrant up"):
        _ = VagrantLab(tmp_path).inventory


def test_exec_quotes_argv_for_the_remote_shell(lab: VagrantLab, fake: FakeRun) -> None:
    lab.exec("node2", ["sh", "-c", "echo 'a b'; wg show"])
    argv = fake.calls[0]
    assert argv[:5] == ["ssh", "-F", str(lab._ssh_dir / "config"), "-l", "root"]
    assert "ControlMaster=auto" in argv and "ControlPersist=10m" in argv
    assert argv[-2] == "node2"
    assert shlex.split(argv[-1]) == ["sh", "-c", "echo 'a b'; wg show"]


def test_exec_refuses_unknown_vms_and_reports_ssh_failures(
    lab: VagrantLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LabUsageError, match="no VM named 'node7'"):
        lab.exec("node7", ["true"])

    def ssh_fail(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 255, "", "ssh: connect to host: refused")

    monkeypatch.setattr(vagrant, "run", ssh_fail)
    with pytest.raises(LabError, match="ssh to node1 failed: ssh: connect to host: refused"):
        lab.exec("node1", ["true"])


def test_sigterm_stops_the_unit_and_returns_its_exit_code(lab: VagrantLab, fake: FakeRun) -> None:
    fake.answer("systemctl is-active ikto-agent.service'", 0, "active\n")
    fake.answer("ExecMainCode", 0, "ExecMainCode=1\nExecMainStatus=0\n")
    assert lab.stop_agent("node2", signal.SIGTERM, timeout=10) == 0
    remote = fake.remote()
    assert "timeout 20 systemctl stop ikto-agent.service" in remote[1]
    assert "systemctl -q is-active ikto-agent.service || exit 0" in remote[2]


def test_sigkill_kills_only_the_main_process(lab: VagrantLab, fake: FakeRun) -> None:
    fake.answer("systemctl is-active ikto-agent.service'", 0, "active\n")
    fake.answer("ExecMainCode", 0, "ExecMainCode=2\nExecMainStatus=9\n")
    assert lab.stop_agent("node1", signal.SIGKILL) == -9
    assert "systemctl kill --kill-who=main --signal=9 ikto-agent.service" in fake.remote()[1]


def test_stopping_a_stopped_agent_is_a_usage_error(lab: VagrantLab, fake: FakeRun) -> None:
    fake.answer("is-active", 3, "failed\n")
    assert not lab.agent_running("node1")
    with pytest.raises(LabUsageError, match="not running"):
        lab.stop_agent("node1")


def test_add_node_inits_the_spare_on_the_vm_then_starts_it(lab: VagrantLab, fake: FakeRun) -> None:
    fake.answer("cat /etc/ikto/ikto.json", 0, json.dumps({"name": "node3"}))
    lab.add_node("node3", private_address="198.19.5.0", start=True)
    remote = fake.remote()
    assert shlex.split(remote[0]) == [
        "ikto", "init", "-m", "198.19.0.0/16", "-p", "24",
        "--private-key-path", "/etc/ikto/private.key", "--name", "node3",
        "--advertise-address", "198.18.1.13", "--nats-url", "nats://198.18.1.11:4222",
        "-o", "/etc/ikto/ikto.json",
    ]  # fmt: skip
    assert remote[1] == "cat /etc/ikto/ikto.json"
    assert '"private_address": "198.19.5.0"' in remote[2] and "umask 077" in remote[2]
    assert "systemctl start ikto-agent.service" in remote[3]
    assert lab.nodes() == ["node3"] and lab.members() == ["node3"]
    with pytest.raises(LabUsageError, match="already exists"):
        lab.add_node("node3")


def test_start_failure_shows_the_journal(lab: VagrantLab, fake: FakeRun) -> None:
    fake.answer("systemctl start", 3)
    fake.answer("journalctl", 0, "agent: bad config\n")
    with pytest.raises(LabError, match="exited at start:\nagent: bad config"):
        lab.start_agent("node1")


def test_reset_stops_agents_everywhere_before_wiping_nats(lab: VagrantLab, fake: FakeRun) -> None:
    lab._reset()
    remote = fake.remote()
    hosts = [c[-2] for c in fake.calls if c[0] == "ssh"]
    assert sorted(hosts[:3]) == ["node1", "node2", "node3"]
    assert all("systemctl stop ikto-agent.service" in r for r in remote[:3])
    assert all("ip link del dev wg-ikto" in r for r in remote[:3])
    assert hosts[3:] == ["node1", "node1"]
    assert "systemctl stop ikto-nats.service; rm -rf /var/lib/private/ikto-nats/*" in remote[3]
    assert "systemctl start ikto-nats.service" in remote[4]
    assert lab.nodes() == []


OURS = 'File.write(File.join(HERE, ".vagrant/ikto-inventory.json"), "{}")\n'
REPO = Path(__file__).resolve().parents[2]


def test_the_vagrantfile_is_found_upward_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IKTO_VAGRANT_DIR", raising=False)
    (tmp_path / "Vagrantfile").write_text(OURS)
    box = tmp_path / "vagrant" / "box"  # a box's own Vagrantfile is not the lab's
    box.mkdir(parents=True)
    (box / "Vagrantfile").write_text('Vagrant.configure("2") do |config| end\n')
    assert vagrant.default_root(box) == tmp_path
    monkeypatch.chdir(box)
    assert VagrantLab().root == tmp_path
    # The source tree's own Vagrantfile is the one the driver reads.
    assert vagrant.default_root(REPO / "vagrant" / "box") == REPO


def test_ikto_vagrant_dir_names_the_vagrantfile_explicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Vagrantfile").write_text(OURS)
    monkeypatch.setenv("IKTO_VAGRANT_DIR", str(elsewhere))
    assert vagrant.default_root(REPO) == elsewhere
    monkeypatch.setenv("IKTO_VAGRANT_DIR", str(tmp_path))
    with pytest.raises(LabUsageError, match=f"IKTO_VAGRANT_DIR={tmp_path}: no ikto Vagrantfile"):
        vagrant.default_root()


def test_no_vagrantfile_says_where_it_looked_and_how_to_name_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IKTO_VAGRANT_DIR", raising=False)
    with pytest.raises(LabUsageError, match=f"no ikto Vagrantfile in {tmp_path} or above.*IKTO_VAGRANT_DIR"):
        vagrant.default_root(tmp_path)
