"""Facts the lab reads that the agent does not: mounts from /proc/self/mountinfo. Pure.

`wg show dump` and `ip -j addr` are parsed by ikto.wg, the same code the agent uses.
"""

from __future__ import annotations


def mounts_under(mountinfo: str, root: str) -> list[str]:
    """Mount points at or below root from /proc/self/mountinfo, deepest first."""
    root = root.rstrip("/")
    found = []
    for ln in mountinfo.splitlines():
        fields = ln.split(" ")
        if len(fields) < 5:
            continue
        # mountinfo escapes spaces and friends as octal (\040).
        point = fields[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))
