"""The one command runner of the lab, the tests and the benchmarks: run(), spawn(), interactive().

Each logs its argv (at debug) and raises CommandError when a command fails, is missing or hangs.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ikto.errors import IktoError, UsageError

log = logging.getLogger("ikto_lab")

# Commands that only read state get this; anything slower than this is hung.
DEFAULT_TIMEOUT = 60.0


class LabError(IktoError):
    """Something in the lab failed; the message says what and, when known, how to fix it."""


class LabUsageError(UsageError):
    """The user asked for something the lab cannot do as asked (exit 2)."""


class CommandError(LabError):
    """A command failed: exited non-zero, was not found (127) or timed out (None); argv, code, stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str, message: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr.splitlines()[-1] if self.stderr else "no output"
        super().__init__(message or f"{argv[0]} exited {returncode}: {detail} (ran: {shlex.join(argv)})")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture its output as text; raise CommandError if check and it fails."""
    if log.isEnabledFor(logging.DEBUG):  # benchmarks time calls with hundreds of arguments
        log.debug("[#] %s", shlex.join(argv))
    try:
        cp = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
            cwd="/",
        )
    except FileNotFoundError:
        raise _not_found(argv) from None
    except subprocess.TimeoutExpired:
        msg = f"{argv[0]} did not finish in {timeout:g} s (ran: {shlex.join(argv)})"
        raise CommandError(argv, None, "", msg) from None
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stderr or cp.stdout)
    return cp


def spawn(
    argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start argv detached (own session, stdin closed), stdout and stderr appended to log_path."""
    log.debug("[#] %s &> %s", shlex.join(argv), log_path)
    with open(log_path, "ab") as out:
        try:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd="/",
            )
        except FileNotFoundError:
            raise _not_found(argv) from None


def interactive(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Run argv attached to our terminal and return its exit code."""
    log.debug("[#] %s", shlex.join(argv))
    try:
        return subprocess.call(list(argv), env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise _not_found(argv) from None


def _not_found(argv: Sequence[str]) -> CommandError:
    return CommandError(argv, 127, "", f"{argv[0]}: command not found (run `make deps` to install it)")


def env_with_path(*dirs: str) -> dict[str, str]:
    """Our environment with dirs prepended to PATH (and the sbin dirs root needs appended)."""
    env = dict(os.environ)
    parts = [*dirs, *env.get("PATH", "/usr/bin:/bin").split(":")]
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in parts:
            parts.append(extra)
    env["PATH"] = ":".join(dict.fromkeys(p for p in parts if p))
    return env
