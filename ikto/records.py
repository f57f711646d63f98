"""The small records beside the entries (docs/liveness.md): a node's presence, `alive.<id>`,
and what other nodes saw of it, `seen.<id>`. Nobody watches them; they are read on demand."""

from __future__ import annotations

import json

from ikto import ipam
from ikto.models import endpoint_text


def presence(name: str) -> bytes:
    """Our presence record: its server timestamp is what counts; the name is for people."""
    return json.dumps({"name": name}).encode()


def sighting(by: str, endpoint: str | None) -> bytes:
    """A witness record: node `by` saw the subject handshaking, from `endpoint`."""
    return json.dumps({"by": by, "endpoint": endpoint}).encode()


def sighted_endpoint(value: bytes | None) -> str | None:
    """The endpoint a witness record reports, if it is a usable `host:port`."""
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    text = data.get("endpoint") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    try:
        address, port = ipam.parse_endpoint(text)
    except ValueError:
        return None
    if ipam.unusable_endpoint_reason(address):
        return None
    return endpoint_text(address, port)
