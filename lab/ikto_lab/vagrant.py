"""The Vagrant lab: the same LabDriver, with each node a Debian VM (see the source tree's Vagrantfile).

`vagrant up` makes the VMs (libvirt, software emulation) and provisions them: ikto from
this tree, NATS on node1, the agent as the packaged systemd unit on the members, and
spare VMs with ikto installed but not initialised, which add_node() turns into nodes.
This driver never makes VMs mid-test (an emulated boot takes minutes); `down()` resets the
lab to "no node, empty NATS" and `destroy()` (or `make vagrant-down`) removes the VMs.

Every command runs over plain ssh as root, with one reused connection per VM
(ControlMaster): about 0.1-0.2 s a command, where `vagrant ssh` starts Ruby and Vagrant for
each call (about 5 s) and sudo alone adds 0.25 s under emulation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ikto.files import write_atomic
from ikto_lab.driver import CONFIG_PATH, DEV, KEY_PATH, REMOVE_LAN, LabDriver
from ikto_lab.shell import CommandError, LabError, LabUsageError, run

UNIT = "ikto-agent.service"
NATS_UNIT = "ikto-nats.service"
ADMIN_SOCKET = "/run/ikto/ikto.sock"
INVENTORY = Path(".vagrant/ikto-inventory.json")
STATE = Path(".vagrant/ikto-lab.json")
# Timeouts the suite gives for agent and NATS lifecycles assume native speed; the VMs run
# under software emulation, 7-15x slower for CPU-bound work such as Python's start-up.
DEFAULT_SLOWDOWN = 4.0
# systemd's ExecMainCode: how the main process ended (waitid(2)'s si_code).
_CLD_EXITED = 1
# JetStream healthy, asked with bash alone: python3 would take a second to start.
_NATS_HEALTHY = (
    "exec 3<>/dev/tcp/127.0.0.1/8222 && "
    "printf 'GET /healthz?js-enabled-only=true HTTP/1.0\\r\\n\\r\\n' >&3 && "
    "grep -q '\"ok\"' <&3"
)

T = TypeVar("T")


def default_root(cwd: Path | None = None) -> Path:
    """The directory holding ikto's Vagrantfile: $IKTO_VAGRANT_DIR, else the nearest one at or
    above the working directory (so `make e2e-vagrant` and a run from the source tree find it)."""
    if env := os.environ.get("IKTO_VAGRANT_DIR"):
        root = Path(env)
        if not _is_ours(root / "Vagrantfile"):
            raise LabUsageError(f"IKTO_VAGRANT_DIR={env}: no ikto Vagrantfile there")
        return root
    start = (cwd or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if _is_ours(d / "Vagrantfile"):
            return d
    raise LabUsageError(
        f"no ikto Vagrantfile in {start} or above: run from the ikto source tree, "
        "or set IKTO_VAGRANT_DIR to the directory holding it"
    )


def _is_ours(vagrantfile: Path) -> bool:
    """True if this Vagrantfile writes the inventory this driver reads (not, e.g., the box's)."""
    try:
        return INVENTORY.name in vagrantfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


@dataclass(frozen=True)
class Inventory:
    """The VMs as the Vagrantfile describes them (.vagrant/ikto-inventory.json)."""

    nats_node: str
    nats_url: str
    mesh_cidr: str
    subnet_prefix: int
    members: tuple[str, ...]
    spares: tuple[str, ...]
    underlay: dict[str, str]
    wireguard: dict[str, str]

    @classmethod
    def from_json(cls, text: str) -> Inventory:
        """Parse and check the inventory; LabError naming what is wrong."""
        try:
            d = json.loads(text)
            nodes = d["nodes"]
            inv = cls(
                nats_node=str(d["nats_node"]),
                nats_url=str(d["nats_url"]),
                mesh_cidr=str(d["mesh_cidr"]),
                subnet_prefix=int(d["subnet_prefix"]),
                members=tuple(str(n) for n in d["members"]),
                spares=tuple(str(n) for n in d["spares"]),
                underlay={str(n): str(v["underlay"]) for n, v in nodes.items()},
                wireguard={str(n): str(v["wireguard"]) for n, v in nodes.items()},
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise LabError(f"{INVENTORY}: not an inventory the Vagrantfile writes ({e!r})") from None
        missing = [n for n in (*inv.members, *inv.spares) if n not in inv.underlay]
        if missing:
            raise LabError(f"{INVENTORY}: no address for {', '.join(missing)}")
        return inv

    @property
    def machines(self) -> list[str]:
        """Every VM, members first."""
        return [*self.members, *self.spares]


class VagrantLab(LabDriver):
    """A lab of Vagrant VMs on an isolated libvirt network, driven over ssh."""

    def __init__(self, root: Path | str | None = None, *, slowdown: float | None = None) -> None:
        """root: the directory of ikto's Vagrantfile (default: default_root())."""
        self.root = Path(root) if root is not None else default_root()
        self.slowdown = slowdown or float(os.environ.get("IKTO_VAGRANT_SLOWDOWN", DEFAULT_SLOWDOWN))
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:10]
        # Short: a ControlPath must fit in a unix socket address (108 bytes).
        self._ssh_dir = Path(tempfile.gettempdir()) / f"ikto-vagrant-{digest}"
        self._inventory: Inventory | None = None

    # Files and state

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            path = self.root / INVENTORY
            try:
                self._inventory = Inventory.from_json(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise LabUsageError(
                    f"no {path}: the VMs are not up (run `vagrant up` in {self.root}, or `make e2e-vagrant`)"
                ) from None
        return self._inventory

    def _load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / STATE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"clean": False, "nodes": {}}
        return data

    def _save_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.root / STATE, json.dumps(state, indent=2) + "\n", mode=0o644)

    def _set_member(self, node: str, member: bool) -> None:
        state = self._load_state()
        state["clean"] = False
        state["nodes"][node] = {"member": member}
        self._save_state(state)

    # Vagrant and ssh

    def _vagrant(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, VAGRANT_CWD=str(self.root))
        if (self.root / INVENTORY).exists():
            # The Vagrantfile defines VMs from IKTO_VAGRANT_*: describe the VMs that were made,
            # whatever this process's environment says.
            inv = self.inventory
            env["IKTO_VAGRANT_NODES"] = str(len(inv.members))
            env["IKTO_VAGRANT_SPARES"] = str(len(inv.spares))
            env["IKTO_VAGRANT_USERSPACE"] = ",".join(
                n for n in inv.machines if inv.wireguard[n] == "userspace"
            )
        return run(["vagrant", *args], timeout=timeout, env=env)

    def _running(self) -> set[str]:
        """The VMs libvirt has running, per `vagrant status`."""
        cp = self._vagrant("status", "--machine-readable", timeout=300)
        running = set()
        for line in cp.stdout.splitlines():
            parts = line.split(",")
            if len(parts) >= 4 and parts[2] == "state" and parts[3] == "running":
                running.add(parts[1])
        return running

    @property
    def _ssh_config(self) -> Path:
        return self._ssh_dir / "config"

    def _refresh_ssh_config(self) -> None:
        """`vagrant ssh-config` once for every VM (their DHCP addresses may change at boot)."""
        self.close()
        self._ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cp = self._vagrant("ssh-config", *self.inventory.machines, timeout=300)
        write_atomic(self._ssh_config, cp.stdout, mode=0o600)

    def _ssh_argv(self, node: str) -> list[str]:
        if not self._ssh_config.exists():
            self._refresh_ssh_config()
        return [
            "ssh", "-F", str(self._ssh_config),
            "-l", "root",  # the box authorises Vagrant's key for root too
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._ssh_dir}/%n",
            "-o", "ControlPersist=10m",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=30",
            "-o", "ServerAliveInterval=10",
            node,
        ]  # fmt: skip

    def close(self) -> None:
        """Close the shared ssh connections."""
        if not self._ssh_config.exists():
            return
        for sock in self._ssh_dir.glob("node*"):
            run([*self._ssh_argv(sock.name)[:-1], "-O", "exit", sock.name], check=False, timeout=10)

    def _check_node(self, node: str) -> None:
        if node not in self.inventory.underlay:
            known = ", ".join(self.inventory.machines)
            raise LabUsageError(f"no VM named {node!r} in the Vagrant lab (VMs: {known})")

    def exec(
        self, node: str, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        self._check_node(node)
        cp = run([*self._ssh_argv(node), shlex.join(argv)], check=False, timeout=timeout)
        if cp.returncode == 255 and "Permission denied" in cp.stderr:
            raise LabError(
                f"ssh to root@{node} was refused: the VM runs an older box "
                "(rebuild it: `make vagrant-down box`)"
            )
        if cp.returncode == 255 and "ssh:" in cp.stderr:
            raise LabError(
                f"ssh to {node} failed: {cp.stderr.strip().splitlines()[-1]} "
                f"(is the VM running? `vagrant status` in {self.root})"
            )
        if check and cp.returncode != 0:
            raise CommandError(list(argv), cp.returncode, cp.stderr or cp.stdout)
        return cp

    def _sh(
        self, node: str, script: str, *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.exec(node, ["bash", "-c", script], check=check, timeout=timeout)

    def _parallel(self, fn: Callable[[str], T], nodes: Iterable[str]) -> list[T]:
        nodes = list(nodes)
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return list(pool.map(fn, nodes))

    # Lifecycle

    def up(self, nodes: int = 3, **_: Any) -> None:
        """Make sure the VMs run (`vagrant up` if not), reset them, start `nodes` nodes."""
        inv_path = self.root / INVENTORY
        if not inv_path.exists() or not set(self.inventory.machines) <= self._running():
            self._vagrant("up", timeout=3600)
            self._inventory = None
        inv = self.inventory
        if nodes > len(inv.machines):
            raise LabUsageError(
                f"{nodes} nodes asked for, the Vagrant lab has {len(inv.machines)} VMs "
                "(raise IKTO_VAGRANT_NODES or IKTO_VAGRANT_SPARES and `vagrant up` again)"
            )
        self._refresh_ssh_config()
        if not self._load_state().get("clean"):
            self._reset()
        names = inv.machines[:nodes]
        self._parallel(self._init, names)
        self._save_state({"clean": False, "nodes": {n: {"member": False} for n in names}})
        self._parallel(self.start_agent, names)

    def down(self) -> None:
        """Reset every running VM: no agent, no interface, no config, NATS empty. VMs stay."""
        if not (self.root / INVENTORY).exists():
            return
        try:
            self._refresh_ssh_config()
        except CommandError as e:
            if e.returncode in (None, 127):  # vagrant hung or is missing: say so
                raise
            return  # no VM is running: nothing to reset
        self._reset()
        self.close()

    def destroy(self) -> None:
        """Remove the VMs (`vagrant destroy -f`) and this driver's state."""
        self.close()
        self._vagrant("destroy", "-f", timeout=600)
        for p in (STATE, INVENTORY):
            (self.root / p).unlink(missing_ok=True)

    def _reset(self) -> None:
        script = (
            f"systemctl stop {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; "
            # Deleting the link also ends wireguard-go, which KillMode=process leaves running.
            f"ip link del dev {DEV} 2>/dev/null; {REMOVE_LAN}; "
            f"rm -rf /etc/ikto /etc/wireguard/{DEV}.conf /run/wireguard/{DEV}.sock; true"
        )
        self._parallel(lambda n: self._sh(n, script), self.inventory.machines)
        # Wipe JetStream only once no agent can write to it.
        self._sh(
            self.inventory.nats_node,
            f"systemctl stop {NATS_UNIT}; rm -rf /var/lib/private/ikto-nats/* /var/lib/ikto-nats/*",
        )
        self.start_nats()
        self._save_state({"clean": True, "nodes": {}})

    # Nodes

    def nodes(self) -> list[str]:
        order = {n: i for i, n in enumerate(self.inventory.machines)}
        return sorted(self._load_state()["nodes"], key=lambda n: order.get(n, len(order)))

    def members(self) -> list[str]:
        state = self._load_state()["nodes"]
        return [n for n in self.nodes() if state[n]["member"]]

    def underlay(self, node: str) -> str:
        self._check_node(node)
        return self.inventory.underlay[node]

    def _init(self, node: str, private_address: str | None = None) -> None:
        inv = self.inventory
        self.exec(
            node,
            [
                "ikto", "init",
                "-m", inv.mesh_cidr, "-p", str(inv.subnet_prefix),
                "--private-key-path", KEY_PATH,
                "--name", node,
                "--advertise-address", inv.underlay[node],
                "--nats-url", inv.nats_url,
                "-o", CONFIG_PATH,
            ],
            check=True,
            timeout=60 * self.slowdown,
        )  # fmt: skip
        if private_address is not None:
            self.set_config(node, private_address=private_address)

    def add_node(self, name: str, *, private_address: str | None = None, start: bool = True) -> str:
        """Turn spare VM `name` into a node (fresh config, key made on the VM), then start it."""
        self._check_node(name)
        if name in self._load_state()["nodes"]:
            raise LabUsageError(f"node {name!r} already exists")
        self._init(name, private_address)
        self._set_member(name, False)
        if start:
            self.start_agent(name)
        return name

    def config(self, node: str) -> dict[str, Any]:
        """The node's /etc/ikto/ikto.json."""
        data: dict[str, Any] = json.loads(self.exec(node, ["cat", CONFIG_PATH], check=True).stdout)
        return data

    def set_config(self, node: str, **fields: Any) -> None:
        """Change fields of the node's config file (takes effect at the next agent start)."""
        data = self.config(node)
        data.update(fields)
        text = json.dumps(data, indent=2) + "\n"
        # umask 077 and a rename: the file holds the key path and stays 0600, like init's.
        self._sh(
            node,
            f"umask 077; printf %s {shlex.quote(text)} >{CONFIG_PATH}.tmp && "
            f"mv {CONFIG_PATH}.tmp {CONFIG_PATH}",
        )

    # Agents

    def agent_running(self, node: str) -> bool:
        state = self._sh(node, f"systemctl is-active {UNIT}", check=False).stdout.strip()
        return state in ("active", "activating", "deactivating", "reloading")

    def start_agent(self, node: str, timeout: float = 30.0) -> None:
        """Start the unit and wait until the agent serves its admin socket."""
        limit = timeout * self.slowdown
        # A fresh RuntimeDirectory each start: the socket appears when the agent listens.
        script = (
            f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl start {UNIT} || exit 4; "
            f"end=$((SECONDS + {int(limit)})); while (( SECONDS < end )); do "
            f"[[ -S {ADMIN_SOCKET} ]] && exit 0; systemctl -q is-active {UNIT} || exit 3; "
            "sleep 0.2; done; exit 2"
        )
        rc = self._sh(node, script, check=False, timeout=limit + 30).returncode
        if rc in (3, 4):
            raise LabError(f"the agent on {node} exited at start:\n{self.log_tail(node)}")
        if rc != 0:
            raise LabError(
                f"the agent on {node} did not open its admin socket in {limit:g} s:\n" + self.log_tail(node)
            )
        self._set_member(node, True)

    def _exit_code(self, node: str) -> int | None:
        """How the unit's last main process ended: its exit code, or -signal like Popen."""
        out = self._sh(node, f"systemctl show -p ExecMainCode -p ExecMainStatus {UNIT}").stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        try:
            code, status = int(props["ExecMainCode"]), int(props["ExecMainStatus"])
        except (KeyError, ValueError):
            return None
        if code == 0:
            return None  # never ran
        return status if code == _CLD_EXITED else -status

    def _wait_inactive(self, node: str, limit: float) -> bool:
        script = (
            f"end=$((SECONDS + {int(limit)})); while (( SECONDS < end )); do "
            f"systemctl -q is-active {UNIT} || exit 0; sleep 0.2; done; exit 1"
        )
        return self._sh(node, script, check=False, timeout=limit + 30).returncode == 0

    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """SIGTERM: `systemctl stop` (as on a real host); others: `systemctl kill` the main pid."""
        if not self.agent_running(node):
            raise LabUsageError(f"the agent on {node} is not running")
        limit = timeout * self.slowdown
        if sig == signal.SIGTERM:
            self._sh(node, f"timeout {int(limit)} systemctl stop {UNIT}", timeout=limit + 30)
        else:
            self._sh(node, f"systemctl kill --kill-who=main --signal={int(sig)} {UNIT}")
        if not self._wait_inactive(node, limit):
            raise LabError(f"the agent on {node} ignored signal {sig} for {limit:g} s")
        return self._exit_code(node)

    def leave_node(self, node: str, *, down: bool = False, timeout: float = 15.0) -> int | None:
        """`ikto leave` on node, then wait for the agent to exit; its exit code."""
        limit = timeout * self.slowdown
        self.exec(node, ["ikto", "leave", *(["--down"] if down else [])], check=True, timeout=limit)
        if not self._wait_inactive(node, limit):
            raise LabError(f"the agent on {node} did not exit {limit:g} s after leave")
        self._set_member(node, False)
        return self._exit_code(node)

    def log_tail(self, node: str, lines: int = 30) -> str:
        """The last lines of the agent's journal on node."""
        cp = self.exec(node, ["journalctl", "-u", UNIT, "-n", str(lines), "--no-pager", "-o", "cat"])
        return cp.stdout.rstrip() or "(no agent log)"

    # NATS (one server, on node1)

    def stop_nats(self) -> None:
        self._sh(self.inventory.nats_node, f"systemctl stop {NATS_UNIT}")

    def start_nats(self, timeout: float = 30.0) -> None:
        limit = timeout * self.slowdown
        script = (
            f"systemctl start {NATS_UNIT} || exit 4; end=$((SECONDS + {int(limit)})); "
            f"while (( SECONDS < end )); do ( {_NATS_HEALTHY} ) 2>/dev/null && exit 0; "
            "sleep 0.2; done; exit 2"
        )
        node = self.inventory.nats_node
        if self._sh(node, script, check=False, timeout=limit + 30).returncode != 0:
            journal = self.exec(node, ["journalctl", "-u", NATS_UNIT, "-n", "20", "--no-pager"])
            raise LabError(f"NATS on {node} is not healthy after {limit:g} s:\n{journal.stdout}")
