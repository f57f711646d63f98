"""The OS seam: the only module that runs `wg`, `wg-quick` and `ip` (through `sh`).

Every call goes through one Runner, logs its argv like wg-quick does (`[#] wg set ...`)
and raises WgError carrying argv, exit code and stderr. Calls are synchronous: the agent
runs them in a worker thread (`sh` with `_async=True` stalls >= 1 s on a few % of calls).
Parsing their output is pure and lives apart, in wgfacts.py (re-exported here).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
from collections.abc import Callable, Iterator
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from pathlib import Path
from typing import Protocol

import sh

from ikto.ipam import Interface, Network
from ikto.keys import is_valid_public_key
from ikto.models import Link, PeerConfig, Plan, WgDevice
from ikto.wgerrors import PACKAGES
from ikto.wgerrors import WgError as WgError
from ikto.wgfacts import parse_dump, parse_host_addresses, parse_ip_addr, parse_ip_link, parse_routes

log = logging.getLogger(__name__)

Runner = Callable[[list[str], str | None], str]
"""(argv, stdin) -> stdout; raises WgError on failure."""

CHUNK_PEERS = 1000
"""Peers per `wg set` call: ~170 bytes of argv each keeps a call far below ARG_MAX."""

# Documentation addresses (RFC 5737, RFC 3849): `ip route get` only looks the route up.
_PROBE_V4 = "192.0.2.1"
_PROBE_V6 = "2001:db8::1"

def _env() -> dict[str, str]:
    env = dict(os.environ)
    # With LOG_LEVEL set, wireguard-go's daemon inherits our stdout/stderr pipes and `sh`
    # waits ~2 s for them (measured); without it the daemon gets /dev/null. See
    # https://git.zx2c4.com/wireguard-go/tree/main.go ("daemonize the process").
    env.pop("LOG_LEVEL", None)
    # English messages: the hints above match them.
    env["LC_ALL"] = "C"
    return env


_ENV = _env()


@functools.lru_cache(maxsize=32)
def _command(name: str) -> sh.Command:
    """sh.Command resolves the program on PATH; do it once per program, not per call."""
    return sh.Command(name)


def sh_runner(argv: list[str], stdin: str | None = None) -> str:
    """Run argv synchronously through `sh`; return stdout, raise WgError on failure."""
    log.debug("[#] %s", shlex.join(argv))  # never log stdin: it may hold a private key
    try:
        cmd = _command(argv[0])
    except sh.CommandNotFound:
        msg = f"{argv[0]}: command not found (install {PACKAGES.get(argv[0], argv[0])})"
        raise WgError(argv, 127, "", message=msg) from None
    try:
        proc = cmd(
            *argv[1:],
            _in=stdin,
            _tty_in=False,
            _tty_out=False,
            _err_to_out=False,
            _return_cmd=True,
            _env=_ENV,
            # Python opens every fd close-on-exec (PEP 446), so nothing of ours leaks into
            # wg or wireguard-go; skipping sh's close loop in the child saves ~3 ms a call.
            _close_fds=False,
            # No _timeout: with it every call took ~100 ms instead of ~10 ms (measured, sh 2.4).
        )
    except sh.ErrorReturnCode as e:
        stderr = e.stderr.decode("utf-8", "replace")
        if stderr.strip():
            log.debug("%s", stderr.rstrip())
        raise WgError(argv, e.exit_code, stderr) from None
    stderr = proc.stderr.decode("utf-8", "replace")
    if stderr.strip():
        log.debug("%s", stderr.rstrip())
    return str(proc.stdout.decode("utf-8", "replace"))


class WgApi(Protocol):
    """What the agent needs from the OS: the seam that tests replace with a fake."""

    dev: str

    def public_key(self, private_b64: str) -> str: ...
    def link(self) -> Link | None: ...
    def up(self, conf_path: Path) -> None: ...
    def down(self, conf_path: Path) -> None: ...
    def delete(self) -> None: ...
    def dump(self) -> WgDevice: ...
    def addresses(self) -> list[Interface]: ...
    def host_addresses(self) -> list[Interface]: ...
    def configure(self, listen_port: int, private_key_path: Path) -> None: ...
    def add_address(self, iface: Interface) -> None: ...
    def remove_address(self, iface: Interface) -> None: ...
    def set_link_up(self, mtu: int | None) -> None: ...
    def routes(self) -> list[Network]: ...
    def add_route(self, net: Network) -> None: ...
    def del_route(self, net: Network) -> None: ...
    def apply(self, plan: Plan) -> None: ...
    def syncconf(self, wg_conf_text: str) -> None: ...


class Wg:
    """One WireGuard interface, optionally inside a network namespace."""

    def __init__(self, dev: str, *, netns: str | None = None, runner: Runner | None = None):
        self.dev = dev
        self.netns = netns
        self._runner: Runner = runner or sh_runner

    def run(self, argv: list[str], stdin: str | None = None) -> str:
        """Run argv (inside the namespace, if any) and return its stdout."""
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return self._runner(argv, stdin)

    def public_key(self, private_b64: str) -> str:
        """`wg pubkey` of a private key (given on stdin, never in argv or logs)."""
        out = self.run(["wg", "pubkey"], private_b64.strip() + "\n").strip()
        if not is_valid_public_key(out):
            raise WgError(["wg", "pubkey"], 0, "", message=f"wg pubkey printed no key: {out[:60]!r}")
        return out

    def link(self) -> Link | None:
        """The interface's state, or None if it does not exist."""
        try:
            text = self.run(["ip", "-j", "link", "show", "dev", self.dev])
        except WgError as e:
            if "does not exist" in e.stderr:
                return None
            raise
        return parse_ip_link(text, self.dev)

    def exists(self) -> bool:
        """True if the interface exists (of any type)."""
        return self.link() is not None

    def up(self, conf_path: Path) -> None:
        """wg-quick up: create the interface (kernel, else wireguard-go), address, MTU, up."""
        self.run(["wg-quick", "up", str(conf_path)])

    def down(self, conf_path: Path) -> None:
        """wg-quick down: delete the interface."""
        self.run(["wg-quick", "down", str(conf_path)])

    def delete(self) -> None:
        """Delete the interface; no error if it is absent (wireguard-go then exits)."""
        try:
            self.run(["ip", "link", "del", "dev", self.dev])
        except WgError as e:
            if "Cannot find device" not in e.stderr:
                raise

    def dump(self) -> WgDevice:
        """The interface and its peers as WireGuard holds them."""
        return parse_dump(self.run(["wg", "show", self.dev, "dump"]))

    def addresses(self) -> list[IPv4Interface | IPv6Interface]:
        """The addresses on the interface (link-local included)."""
        return parse_ip_addr(self.run(["ip", "-j", "addr", "show", "dev", self.dev]))

    def host_addresses(self) -> list[IPv4Interface | IPv6Interface]:
        """This host's global addresses on every link but ours (candidate endpoints)."""
        return parse_host_addresses(self.run(["ip", "-j", "addr", "show"]), skip=(self.dev, "lo"))

    def configure(self, listen_port: int, private_key_path: Path) -> None:
        """Set the listen port and private key (the key goes by file, never in argv)."""
        self.run(["wg", "set", self.dev, "listen-port", str(listen_port),
                  "private-key", str(private_key_path)])

    def ensure_address(self, iface: IPv4Interface | IPv6Interface, mtu: int | None) -> None:
        """Add the address if missing, then set the MTU (if given) and bring the link up."""
        if iface not in self.addresses():
            self.add_address(iface)
        self.set_link_up(mtu)

    def add_address(self, iface: IPv4Interface | IPv6Interface) -> None:
        """Add an address to the interface."""
        self.run(["ip", f"-{iface.version}", "addr", "add", str(iface), "dev", self.dev])

    def set_link_up(self, mtu: int | None) -> None:
        """Bring the link up, setting the MTU first if given."""
        argv = ["ip", "link", "set", "dev", self.dev]
        if mtu is not None:
            argv += ["mtu", str(mtu)]
        self.run([*argv, "up"])

    def remove_address(self, iface: IPv4Interface | IPv6Interface) -> None:
        """Remove an address from the interface (e.g. after moving to a new subnet)."""
        self.run(["ip", f"-{iface.version}", "addr", "del", str(iface), "dev", self.dev])

    def routes(self) -> list[Network]:
        """The routes through the interface that are not the kernel's own (IPv4 and IPv6)."""
        out: list[Network] = []
        for version in (4, 6):
            text = self.run(["ip", "-j", f"-{version}", "route", "show", "dev", self.dev])
            out += parse_routes(text, version)
        return out

    def add_route(self, net: Network) -> None:
        """Route a network through the interface (replacing any route to it)."""
        self.run(["ip", f"-{net.version}", "route", "replace", str(net), "dev", self.dev])

    def del_route(self, net: Network) -> None:
        """Stop routing a network through the interface; no error if it is not routed."""
        try:
            self.run(["ip", f"-{net.version}", "route", "del", str(net), "dev", self.dev])
        except WgError as e:
            if "No such process" not in e.stderr:
                raise

    def apply(self, plan: Plan) -> None:
        """Apply a plan with one `wg set` (removes first); nothing runs for an empty plan."""
        for args in plan_args(plan):
            self.run(["wg", "set", self.dev, *args])

    def syncconf(self, wg_conf_text: str) -> None:
        """Make the interface match a wg(8)-format config exactly (text goes on stdin)."""
        self.run(["wg", "syncconf", self.dev, "/dev/stdin"], wg_conf_text)


def peer_args(p: PeerConfig) -> list[str]:
    """`wg set` arguments that make one peer exactly p (allowed-ips replaces the list)."""
    args = ["peer", p.public_key, "allowed-ips", ",".join(p.allowed_ips)]
    if p.endpoint:
        args += ["endpoint", p.endpoint]
    args += ["persistent-keepalive", str(p.persistent_keepalive) if p.persistent_keepalive else "off"]
    return args


def plan_args(plan: Plan, chunk: int = CHUNK_PEERS) -> Iterator[list[str]]:
    """The `wg set <dev>` argument lists for a plan: one, unless it exceeds chunk peers."""
    ops: list[list[str]] = [["peer", k, "remove"] for k in plan.remove]
    ops += [peer_args(p) for p in plan.set]
    for i in range(0, len(ops), chunk):
        yield [a for op in ops[i : i + chunk] for a in op]


def default_source_address(
    runner: Runner | None = None, *, netns: str | None = None
) -> IPv4Address | IPv6Address | None:
    """The source address of the default route (IPv4 first), or None without one."""
    run = Wg("", netns=netns, runner=runner).run
    for probe in (_PROBE_V4, _PROBE_V6):
        try:
            text = run(["ip", "-j", "route", "get", probe])
        except WgError as e:
            if "unreachable" in e.stderr.lower():
                continue
            raise
        routes = json.loads(text) if text.strip() else []
        for r in routes:
            if r.get("type", "unicast") == "unicast" and r.get("prefsrc"):
                return ip_address(r["prefsrc"])
    return None
