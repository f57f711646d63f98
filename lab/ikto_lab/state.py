"""The lab state dir: its layout, the persisted lab.json, and the lock serialising CLI calls."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ikto.files import write_atomic

STATE_VERSION = 1
DEFAULT_STATE_DIR = Path("/run/ikto-lab")
DEFAULT_NAME = "ikto-lab"


@dataclass
class NodeState:
    """One lab node as recorded in lab.json."""

    name: str
    index: int
    underlay: str  # its own address: on the underlay, or on its router's LAN if NATed
    member: bool = False  # joined the mesh and has not left it
    left: bool = False  # left with `ikto leave`
    public_key: str | None = None
    nat: str | None = None  # behind its own NAT router: "preserve" or "random" (ikto_lab.nat)
    wan_generation: int = 0  # how often its router's WAN address changed
    v03: bool = False  # no agent: WireGuard set by hand as ikto v0.3 did (ikto_lab.legacy)


@dataclass
class LabState:
    """Everything `down` and later CLI calls need to find the lab again."""

    name: str
    nats_cluster: bool
    mesh_cidr: str
    subnet_prefix: int
    nats_servers: list[str] = field(default_factory=list)  # underlay addresses
    nodes: dict[str, NodeState] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw: dict[str, Any] = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"lab state version {raw.get('version')!r}, expected {STATE_VERSION}")
        nodes = {k: NodeState(**v) for k, v in raw.pop("nodes", {}).items()}
        return cls(**raw, nodes=nodes)


@dataclass(frozen=True)
class Layout:
    """Where things live under the state dir."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def lock_file(self) -> Path:
        # Beside the state dir, not in it: `down` removes the dir while holding the lock.
        return self.root.with_name(f".{self.root.name}.lock")

    @property
    def ns_dir(self) -> Path:
        """Holds the bind-mounted mount-namespace files (a private mount of itself)."""
        return self.root / "ns"

    def mntns(self, node: str) -> Path:
        return self.ns_dir / f"{node}.mnt"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def nats_dir(self, server: str) -> Path:
        return self.root / "nats" / server

    def agent_pidfile(self, node: str) -> Path:
        return self.node_dir(node) / "agent.pid"

    def agent_log(self, node: str) -> Path:
        return self.node_dir(node) / "agent.log"

    def load(self) -> LabState | None:
        try:
            return LabState.from_json(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def save(self, state: LabState) -> None:
        write_atomic(self.state_file, state.to_json(), mode=0o644)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock so two lab commands never interleave."""
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def read_pid(path: Path) -> int | None:
    """The pid in a pidfile, or None if it is missing or garbled."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_tail(path: Path, lines: int) -> list[str] | None:
    """The last lines of a text file (a log), or None if it cannot be read."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return None
