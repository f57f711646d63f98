"""`ikto-lab`: bring a namespace lab up, look into it, and tear it down."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ikto.errors import IktoError
from ikto_lab.lab import NamespaceLab
from ikto_lab.nat import MODES, parse_assignments, parse_mode
from ikto_lab.state import DEFAULT_NAME, DEFAULT_STATE_DIR

lab_app = typer.Typer(
    help=(
        "A lab of ikto nodes on this host: one network namespace (plus a private mount "
        "namespace) per node on an isolated bridge, with nats-server beside them. Needs root."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="IKTO_LAB_STATE_DIR", help="Where the lab keeps its state."
    ),
]
Name = Annotated[
    str,
    typer.Option(
        "--name", envvar="IKTO_LAB_NAME", help="Prefix of the lab's network namespace names."
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show every command the lab runs.")
]


@contextmanager
def _errors(verbose: bool) -> Iterator[None]:
    """Log progress to stderr; turn our errors into one `ikto-lab: ...` line and an exit code."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="==> %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        yield
    except IktoError as e:
        typer.echo(f"ikto-lab: {e}", err=True)
        raise typer.Exit(e.exit_code) from None


@lab_app.command()
def up(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=200, help="How many nodes.")] = 3,
    nats_cluster: Annotated[
        bool, typer.Option("--nats-cluster", help="Run a 3-server JetStream cluster.")
    ] = False,
    agents: Annotated[
        bool, typer.Option("--agents/--no-agents", help="Start an ikto agent on every node.")
    ] = True,
    nat: Annotated[
        list[str] | None,
        typer.Option(
            "--nat",
            metavar="NODE=MODE",
            help=f"Put NODE behind its own NAT router; MODE: {' or '.join(MODES)} "
            "(symmetric: a new port per destination). Repeat for more nodes.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for convergence.")] = 60.0,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    name: Name = DEFAULT_NAME,
    verbose: Verbose = False,
) -> None:
    """Create the lab (refuses if one exists: run `ikto-lab down` first) and wait for the mesh."""
    with _errors(verbose):
        routers = parse_assignments(nat or [])
        lab = NamespaceLab(state_dir, name=name)
        t0 = time.monotonic()
        lab.up(nodes, nats_cluster=nats_cluster, start_agents=agents, nat=routers)
        logging.info("lab up in %.1f s", time.monotonic() - t0)
        if agents:
            took = lab.wait_converged(timeout)
            logging.info("mesh of %d nodes converged in %.1f s", nodes, took)


@lab_app.command()
def add(
    node: Annotated[str, typer.Argument(help="Name of the new node, e.g. node4.")],
    private_address: Annotated[
        str | None,
        typer.Option(help="Force the node's private_address (e.g. to test address conflicts)."),
    ] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Start its agent.")] = True,
    nat: Annotated[
        str | None,
        typer.Option(metavar="MODE", help=f"Put it behind its own NAT router: {' or '.join(MODES)}."),
    ] = None,
    v03: Annotated[
        bool,
        typer.Option(
            "--v03",
            help="No agent: set its WireGuard up by hand as ikto v0.3 does, its entry written once "
            "in v0.3's format.",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    verbose: Verbose = False,
) -> None:
    """Add a node to the running lab and start its agent."""
    with _errors(verbose):
        lab = NamespaceLab(state_dir)
        if v03:
            lab.add_v03_node(node)
            return
        mode = parse_mode(nat) if nat is not None else None
        lab.add_node(node, private_address=private_address, start=start, nat=mode)


@lab_app.command()
def router(
    node: Annotated[str, typer.Argument(help="The NATed node whose router to restart.")],
    new_wan: Annotated[
        bool, typer.Option("--new-wan", help="Give the router a new public (WAN) address.")
    ] = False,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    verbose: Verbose = False,
) -> None:
    """Restart NODE's NAT router: every flow (conntrack) forgotten, optionally a new WAN address."""
    with _errors(verbose):
        NamespaceLab(state_dir).restart_router(node, new_wan=new_wan)


@lab_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def exec_(
    node: Annotated[str, typer.Argument(help="The node to run in, e.g. node1.")],
    cmd: Annotated[list[str], typer.Argument(help="The command, after `--`.")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Run a command inside NODE's namespaces, e.g. `ikto-lab exec node1 -- wg show`."""
    with _errors(False):
        raise typer.Exit(NamespaceLab(state_dir).exec_interactive(node, cmd))


@lab_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Show NATS health and each node's agent, mesh address and peer count."""
    with _errors(False):
        st = NamespaceLab(state_dir).status()
        if as_json:
            typer.echo(json.dumps(st, indent=2))
            return
        for s in st["nats"]:
            typer.echo(f"{s['name']:<8} {s['url']:<24} {'healthy' if s['healthy'] else 'DOWN'}")
        typer.echo(
            f"{'NODE':<8} {'ADDRESS':<15} {'NAT ROUTER (WAN)':<26} {'AGENT':<11} {'MESH ADDRESS':<16} PEERS"
        )
        for n in st["nodes"]:
            member = " (left)" if n["left"] else ""
            router = f"{n['nat']} ({n['public_address']})" if n["nat"] else "-"
            typer.echo(
                f"{n['name']:<8} {n['underlay']:<15} {router:<26} {n['agent']:<11} "
                f"{n['mesh_address'] or '-':<16} {n['peers'] if n['peers'] is not None else '-'}"
                f"{member}"
            )


@lab_app.command()
def logs(
    node: Annotated[str, typer.Argument(help="The node whose agent log to show.")],
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Show the end of NODE's agent log."""
    with _errors(False):
        typer.echo(NamespaceLab(state_dir).log_tail(node, lines))


@lab_app.command()
def down(
    state_dir: StateDir = DEFAULT_STATE_DIR, name: Name = DEFAULT_NAME, verbose: Verbose = False
) -> None:
    """Remove the lab: processes, namespaces, mounts and state. Safe to run twice."""
    with _errors(verbose):
        NamespaceLab(state_dir, name=name).down()
        logging.info("lab in %s removed", state_dir)


@lab_app.command()
def demo() -> None:
    """Replace any lab with a 3-node mesh, show it working (peers, pings) and leave it up (`make demo`)."""
    from ikto_lab.demo import main as run_demo

    raise typer.Exit(run_demo())


def main() -> None:
    """The `ikto-lab` console script."""
    lab_app(prog_name="ikto-lab")


if __name__ == "__main__":
    main()
