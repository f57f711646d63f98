"""Logging set up once: one logfmt line per event, structured fields, never secrets."""

from __future__ import annotations

import logging
import sys
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _quote(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\\') or any(ord(c) < 32 for c in s):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info msg="peer joined" name=node2 allowed_ip=...`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"time={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            f"level={record.levelname.lower()}",
            f"msg={_quote(record.getMessage())}",
        ]
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                parts.append(f"{k}={_quote(v)}")
        if record.exc_info and record.levelno >= logging.ERROR:
            parts.append(f"error={_quote(self.formatException(record.exc_info).splitlines()[-1])}")
        return " ".join(parts)


def setup(level: str = "info") -> None:
    """Send ikto's logs to stderr as logfmt at the given level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("ikto").setLevel(level.upper())


def fields(**kw: Any) -> dict[str, Any]:
    """`log.info("peer joined", extra=fields(name=...))` — structured fields for one line.

    Names that LogRecord reserves (name, msg, args, ...) get a `peer_`-style rename:
    `name` becomes `node`, others gain a trailing underscore.
    """
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if v is None:
            continue
        if k in _RESERVED:
            k = "node" if k == "name" else f"{k}_"
        out[k] = v
    return out
