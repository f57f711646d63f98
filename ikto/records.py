"""The small records beside the entries (docs/liveness.md): a node's presence, `alive.<id>`,
and what other nodes saw of it, `seen.<id>`. Nobody watches them; they are read on demand."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ikto import entry, ipam
from ikto.models import endpoint_text

MAX_NAMES = 32  # unreachable peers named in a report (the count is always there)


@dataclass(frozen=True, slots=True)
class Report:
    """A node's view of the mesh, published in its presence record (`ikto status --mesh`)."""

    revision: int  # the newest bucket revision it applied
    expected: int  # peers it should have
    in_wireguard: int
    handshaking: int  # with a handshake in the last 3 minutes
    unreachable: tuple[str, ...] = ()  # peers in its WireGuard it has not heard for long


def presence(name: str, report: Report | None = None) -> bytes:
    """Our presence record: its server timestamp says we are alive; the report is our view.
    It stays small: in a healthy mesh nobody is unreachable."""
    data: dict[str, object] = {"name": name}
    if report is not None:
        data.update(
            rev=report.revision, expected=report.expected, in_wg=report.in_wireguard,
            handshaking=report.handshaking, unreachable=list(report.unreachable[:MAX_NAMES]),
            unreachable_count=len(report.unreachable),
        )
    return json.dumps(data).encode()


def report_of(value: bytes | None) -> tuple[str, Report | None] | None:
    """(name, report) from a presence record; None if it is not one of ours."""
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    ints = [data.get(k) for k in ("rev", "expected", "in_wg", "handshaking")]
    names = data.get("unreachable")
    if not all(isinstance(i, int) for i in ints) or not isinstance(names, list):
        return data["name"], None
    rev, expected, in_wg, handshaking = (int(i) for i in ints)  # type: ignore[arg-type]
    named = tuple(str(n) for n in names)
    count = data.get("unreachable_count")
    if isinstance(count, int) and count > len(named):
        named += (f"(+{count - len(named)} more)",)
    return data["name"], Report(rev, expected, in_wg, handshaking, named)


def sighting(by: str, endpoint: str | None) -> bytes:
    """A witness record: node `by` saw the subject handshaking, from `endpoint`."""
    return json.dumps({"by": by, "endpoint": endpoint}).encode()


def sighted_endpoint(value: bytes | None) -> str | None:
    """The endpoint a witness record reports, if it is a usable `host:port`."""
    text = entry.string_field(value, "endpoint")
    if text is None:
        return None
    try:
        address, port = ipam.parse_endpoint(text)
    except ValueError:
        return None
    if ipam.unusable_endpoint_reason(address):
        return None
    return endpoint_text(address, port)
