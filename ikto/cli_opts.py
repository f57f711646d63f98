"""Options and helpers the `ikto` commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ikto.config import DEFAULT_SOCKET, SOCKET_DIR, load_config
from ikto.errors import UsageError

DEFAULT_CONFIG = Path("/etc/ikto/ikto.json")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
SocketOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket", "-s", show_default=False,
        help="Admin socket of the running agent [default: the only one in /run/ikto].",
    ),
]
MeshOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", show_default=False,
        help="Pick the agent of this config (one host, several meshes: /etc/ikto/<mesh>.json).",
    ),
]


def socket_of(socket: Path | None, config: Path | None) -> Path:
    """The agent to ask: -s, else the one of -c's config, else the only agent on this host."""
    if socket is not None:
        return socket
    if config is not None:
        return load_config(config).socket
    running = sorted(socket_dir().glob("*.sock"))
    if len(running) > 1:
        names = ", ".join(p.name for p in running)
        raise UsageError(
            f"several agents run here ({names} in {socket_dir()}): pick one with -c /etc/ikto/<mesh>.json "
            "or -s SOCKET"
        )
    return running[0] if running else DEFAULT_SOCKET


def socket_dir() -> Path:
    """Where agents put their admin sockets (tests point it elsewhere)."""
    return SOCKET_DIR
