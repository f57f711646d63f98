"""WgError: a failed `wg`, `wg-quick` or `ip` as one line a person can act on (with a hint)."""

from __future__ import annotations

import re
import shlex

from ikto.errors import IktoError

PACKAGES = {"wg": "wireguard-tools", "wg-quick": "wireguard-tools", "ip": "iproute2",
             "wireguard-go": "wireguard-go"}

# Hints for stderr a person sees often: (substring, hint).
_HINTS: tuple[tuple[str, str], ...] = (
    ("Operation not permitted", "run as root or grant CAP_NET_ADMIN"),
    ("Permission denied", "run as root or grant CAP_NET_ADMIN"),
    ("Unable to access interface", "the WireGuard interface does not exist; is the agent running?"),
    ("Address already in use", "another process uses this UDP port; choose another wg_port"),
    ("already exists", "delete it first: ip link del dev <interface>"),
    ("Cannot open network namespace", "the network namespace does not exist"),
    ("Cannot find device", "the interface does not exist"),
)

# wg-quick writes lines to stderr that are not the error: its command echo ("[#] ..."),
# the kernel-module fallback notice and wireguard-go's "not required" banner.
_NOISE = re.compile(r"^(\[#\]|\[!\]|Warning:|[\u2500-\u257f])")


class WgError(IktoError):
    """A wg / wg-quick / ip command failed; str() is one actionable line."""

    # Note: exit_code is the command's status, shadowing IktoError's class attribute.
    def __init__(
        self, argv: list[str], exit_code: int, stderr: str, *, message: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr
        self.hint = _hint(argv, stderr)
        super().__init__(message or self._message())

    def _message(self) -> str:
        msg = f"{shlex.join(self.argv)}: exited {self.exit_code}"
        detail = _error_line(self.argv, self.stderr)
        if detail:
            msg += f": {detail}"
        if self.hint:
            msg += f" ({self.hint})"
        return msg


def _command_name(argv: list[str]) -> str:
    """The program that really ran, behind `ip netns exec NS`."""
    if len(argv) > 4 and argv[:3] == ["ip", "netns", "exec"]:
        return argv[4]
    return argv[0] if argv else ""


def _error_line(argv: list[str], stderr: str) -> str:
    """The one stderr line that says what went wrong."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fell_back = any("Falling back to slow userspace" in ln for ln in lines)
    useful = [
        ln for ln in lines
        if not _NOISE.match(ln) and not (fell_back and ln == "Error: Unknown device type.")
    ]
    if _command_name(argv) == "wg-quick" and not fell_back and "Error: Unknown device type." in lines:
        return "Error: Unknown device type."
    # wg-quick's cleanup trap runs after the failing step, so the first line is the cause.
    return useful[0] if useful else (lines[-1] if lines else "")


def _hint(argv: list[str], stderr: str) -> str | None:
    name = _command_name(argv)
    if name == "wg-quick" and "Unknown device type" in stderr and "Falling back" not in stderr:
        return "no WireGuard kernel module and no wireguard-go: install wireguard-go"
    m = re.search(r'exec of "([^"]+)" failed: No such file', stderr)
    if m:
        prog = m.group(1)
        return f"install {PACKAGES.get(prog, prog)}"
    for needle, hint in _HINTS:
        if needle in stderr:
            return hint
    return None
