"""Packet filters inside a lab netns (iptables), for fault tests: drop, never reject.

Every rule lives in one chain, IKTO-LAB, hooked into INPUT and OUTPUT, so `clear` undoes
them all at once and nothing outside the lab's namespaces is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

from ikto_lab.shell import run

CHAIN = "IKTO-LAB"


def _ipt(netns: str, *args: str, check: bool = True) -> int:
    return run(["ip", "netns", "exec", netns, "iptables", "-w", *args], check=check).returncode


def _ensure_chain(netns: str) -> None:
    if _ipt(netns, "-n", "-L", CHAIN, check=False) != 0:
        _ipt(netns, "-N", CHAIN)
        _ipt(netns, "-I", "INPUT", "-j", CHAIN)
        _ipt(netns, "-I", "OUTPUT", "-j", CHAIN)


def drop(netns: str, rules: Sequence[Sequence[str]]) -> None:
    """Append DROP rules (each iptables match arguments, e.g. ["-p", "udp", "-s", addr])."""
    _ensure_chain(netns)
    for match in rules:
        _ipt(netns, "-A", CHAIN, *match, "-j", "DROP")


def clear(netns: str) -> None:
    """Remove every rule drop() added (a netns without them is fine)."""
    if _ipt(netns, "-n", "-L", CHAIN, check=False) == 0:
        _ipt(netns, "-F", CHAIN)


def dropped_packets(netns: str) -> int:
    """How many packets the chain's rules have dropped so far."""
    cp = run(["ip", "netns", "exec", netns, "iptables", "-w", "-n", "-v", "-x", "-L", CHAIN], check=False)
    total = 0
    for line in cp.stdout.splitlines()[2:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            total += int(fields[0])
    return total
