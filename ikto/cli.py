"""The `ikto` command line: thin; every command resolves a config and calls one module.

Exit codes: 0 success, 1 runtime failure (NATS, WireGuard), 2 bad input (flags, config, key).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ikto import __version__, cli_admin, keys, show
from ikto.cli_opts import DEFAULT_CONFIG, JsonOpt, MeshOpt, SocketOpt, socket_of
from ikto.config import DEFAULT_MESH, DEFAULT_PREFIX, ConfigError, load_config, write_config
from ikto.errors import IktoError, UsageError

PROC_NET = Path("/proc/sys/net")  # forwarding knobs (ikto check, routed networks)
STOP_WITHIN = 10.0  # seconds the agent's process may take to exit once the agent has stopped

app = typer.Typer(
    name="ikto",
    help="WireGuard mesh builder whose only control plane is a NATS JetStream key-value bucket.\n\n"
    "Typical use: `ikto init -o /etc/ikto/ikto.json` once per host, then `ikto agent -c /etc/ikto/ikto.json` "
    "(or the systemd unit), and `ikto status` to see the mesh.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(f"ikto {__version__}")
        raise typer.Exit()


@app.command()
def init(
    mesh_ip_net: Annotated[
        str, typer.Option("--mesh-ip-net", "-m", help="The whole mesh, in CIDR form (IPv6 or IPv4).")
    ] = DEFAULT_MESH,
    subnet_prefix_length: Annotated[
        int, typer.Option("--subnet-prefix-length", "-p", help="Prefix length of each node's subnet.")
    ] = DEFAULT_PREFIX,
    private_key_path: Annotated[
        Path,
        typer.Option(
            help="Where the WireGuard private key lives. Created (0600, new parent dirs 0700) if absent; "
            "an existing key is kept, never overwritten."
        ),
    ] = Path("/etc/ikto/private.key"),
    name: Annotated[
        str | None, typer.Option(help="Node name shown to peers [default: the hostname].")
    ] = None,
    advertise_address: Annotated[
        str | None,
        typer.Option(
            help="Underlay address peers reach us at [default: source address of the default route]."
        ),
    ] = None,
    private_address: Annotated[
        str | None,
        typer.Option(help="Pin this subnet base instead of a random one (sets address_pinned)."),
    ] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].")
    ] = None,
    nats_kv: Annotated[str | None, typer.Option(help="Bucket name [default: ikto-mesh].")] = None,
    wg_dev_name: Annotated[str | None, typer.Option(help="Interface name [default: wg-ikto].")] = None,
    wg_port: Annotated[int | None, typer.Option(help="WireGuard listen port [default: 51820].")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the config here (0600) instead of stdout.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --output file.")] = False,
) -> None:
    """Write a node config: a random subnet of the mesh, a fresh key, this host's address.

    Example: ikto init -m fd10::/16 -p 48 --private-key-path /etc/ikto/private.key -o /etc/ikto/ikto.json
    """
    from ikto.newnode import new_config

    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} already exists; pass --force to overwrite it")
    cfg = new_config(
        mesh_ip_net=mesh_ip_net, subnet_prefix_length=subnet_prefix_length, private_key_path=private_key_path,
        name=name, advertise_address=advertise_address, private_address=private_address, nats_url=nats_url,
        nats_kv=nats_kv, wg_dev_name=wg_dev_name, wg_port=wg_port,
    )
    if output is None:
        print(json.dumps(cfg.to_json_dict(), indent=2))
    else:
        write_config(cfg, output)
        pub = keys.public_key(keys.read_private_key(private_key_path))
        print(f"ikto: wrote {output} (address {cfg.subnet}, public key {pub})", file=sys.stderr)


@app.command()
def keygen() -> None:
    """Print a new private key (like `wg genkey`)."""
    print(keys.generate_private_key())


@app.command()
def pubkey() -> None:
    """Read a private key on stdin and print its public key (like `wg pubkey`)."""
    text = sys.stdin.read()
    try:
        print(keys.public_key(text))
    except ValueError:
        raise UsageError("Key is not the correct length or format") from None


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c", help="Config file to validate.")] = DEFAULT_CONFIG,
) -> None:
    """Validate a config file (and the key it names) without starting anything.

    With routed networks (routes), it also checks that this host forwards packets.
    """
    from ikto.routes import host_warnings

    cfg = load_config(config)
    cfg.require_agent_fields()
    print(f"ok: {config}: {cfg.name} {cfg.subnet} on {cfg.wg_dev_name}, mesh {cfg.mesh_cidr}")
    for problem in host_warnings(cfg.routes, cfg.mesh_cidr, PROC_NET):
        print(f"ikto: warning: {problem}", file=sys.stderr)


@app.command()
def agent(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Node config (from `ikto init`).")
    ] = DEFAULT_CONFIG,
    socket: Annotated[
        Path | None,
        typer.Option("--socket", "-s", help="Admin socket [default: admin_socket from the config]."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Run the mesh agent: bring up WireGuard, claim our address, keep peers equal to the bucket.

    Config precedence: these flags > IKTO_* environment variables > the JSON file > defaults.
    SIGTERM/SIGINT stop it and leave the interface and peers in place.
    """
    from ikto import log
    from ikto.agent import Agent
    from ikto.api import serve
    from ikto.routes import host_warnings

    cfg = load_config(config, admin_socket=socket, log_level=log_level)
    log.setup(cfg.log_level)
    for problem in host_warnings(cfg.routes, cfg.mesh_cidr, PROC_NET):
        logging.getLogger("ikto.agent").warning(problem)
    a = Agent(cfg, config)

    async def _serve(agent: Agent) -> Any:
        return await serve(agent, cfg.socket)

    async def _run() -> int:
        try:
            return await a.run(serve_api=_serve)
        finally:
            # A stop never hangs: if what is left (tasks, worker threads) keeps the process
            # alive STOP_WITHIN s after the agent stopped, every thread's stack goes to the log
            # and the process exits 1.
            faulthandler.dump_traceback_later(STOP_WITHIN, exit=True)

    code = asyncio.run(_run())
    if a.restart:  # a new key (rotation): run again, this process's pid and all
        os.execv(sys.executable, [sys.executable, "-m", "ikto", *sys.argv[1:]])
    raise typer.Exit(code)


@app.command()
def info(socket: SocketOpt = None, as_json: JsonOpt = False, config: MeshOpt = None) -> None:
    """Print the local node and its peers (as ikto v0.3 did)."""
    from ikto.api import call

    socket = socket_of(socket, config)

    node = call(socket, "GET", "/v1/node")
    peers = call(socket, "GET", "/v1/peers")
    if as_json:
        print(json.dumps({"self": node, "peers": peers}, indent=2))
        return
    print("\n".join(show.info(node, peers)))


@app.command()
def status(
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
    config: MeshOpt = None,
    mesh: Annotated[
        bool, typer.Option("--mesh", help="Every node's own report: whom it cannot reach (the whole mesh).")
    ] = False,
) -> None:
    """Print this node's peers (the bucket joined with `wg show`), or with --mesh every node's view.

    With --mesh: one line per node with its state and the peers it cannot reach, from the
    reports each agent keeps in the bucket; nodes that never report (ikto v0.3, or down) are
    shown as such, and a summary line names the pairs that cannot reach each other.
    """
    from ikto.api import call

    st = call(socket_of(socket, config), "GET", "/v1/mesh" if mesh else "/v1/status")
    if as_json:
        print(json.dumps(st, indent=2))
        return
    print("\n".join(show.mesh(st) if mesh else show.status(st)))


@app.command()
def leave(
    socket: SocketOpt = None,
    down: Annotated[bool, typer.Option("--down", help="Also remove the WireGuard interface.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c",
            help="With no agent running: connect to NATS with this config and remove our entry.",
        ),
    ] = None,
) -> None:
    """Leave the mesh: remove our entry from the bucket (with its revision).

    Normally the running agent does it (and then stops). If the agent is not running, pass
    -c CONFIG: the entry is removed only if it still holds our public key.
    """
    socket = socket_of(socket, config)
    if config is not None and not socket.exists():
        from ikto.admin import leave_direct

        asyncio.run(leave_direct(config, down))
    else:
        from ikto.api import call

        call(socket, "POST", f"/v1/leave?down={int(down)}")
    print("ikto: left the mesh" + (" and removed the interface" if down else ""), file=sys.stderr)


cli_admin.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a documented exit code, never a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("ikto: aborted", file=sys.stderr)
        sys.exit(130)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"ikto: {line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except IktoError as e:
        # Only our own error classes choose the exit code (WgError.exit_code is wg's status).
        print(f"ikto: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # Bad flags or arguments: click's UsageError (vendored by newer typer, so matched by shape).
        if getattr(e, "exit_code", None) == 2 and hasattr(e, "format_message"):
            ctx = getattr(e, "ctx", None)
            cmd = ctx.command_path if ctx is not None else "ikto"
            print(f"ikto: {e.format_message()} (see `{cmd} --help`)", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
