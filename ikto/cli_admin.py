"""The `ikto` commands for operators: the bucket, NATS permissions, key rotation."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ikto import show
from ikto.cli_opts import DEFAULT_CONFIG, JsonOpt, MeshOpt, SocketOpt, socket_of
from ikto.config import load_config
from ikto.errors import UsageError


def register(app: typer.Typer) -> None:
    """Add these commands to the `ikto` command line."""
    app.command("rotate-key")(rotate_key)
    app.command()(bucket)
    app.command("nats-permissions")(nats_permissions)


def rotate_key(socket: SocketOpt = None, config: MeshOpt = None) -> None:
    """Replace the running node's WireGuard key without downtime (peers switch in milliseconds).

    The new key is written beside the old one (0600), the interface switches to it, our entry
    gets the new public key, and only then does the new key replace the old file; the agent
    then restarts itself with it. A crash at any step is finished or undone at the next start.
    Set "rotate_key_days" in the config to rotate automatically.
    """
    from ikto.api import call

    got = call(socket_of(socket, config), "POST", "/v1/rotate-key")
    print(f"ikto: rotated the key; new public key {got['public_key']}", file=sys.stderr)


def bucket(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c",
            help=f"Node config to take the NATS settings from [default: {DEFAULT_CONFIG} if it exists].",
            show_default=False,
        ),
    ] = None,
    nats_url: Annotated[str | None, typer.Option(help="NATS server URL(s), overriding the config's.")] = None,
    nats_creds: Annotated[
        Path | None, typer.Option(help="NATS credentials, e.g. an admin's: nodes may not change the bucket.")
    ] = None,
    nats_kv: Annotated[str | None, typer.Option(help="Bucket name, overriding the config's.")] = None,
    max_consumers: Annotated[
        int | None,
        typer.Option(help="Set how many watches (one per agent) the bucket allows (nats-server 2.12.5+)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the mesh's bucket (limits, watches, entries), or raise how many watches it allows.

    Every agent watches the bucket through one consumer on its stream. nats-server 2.11+ caps a
    stream at 1,000 consumers unless it says otherwise, so the 1,001st node could not watch;
    buckets that `ikto agent` creates allow 100,000. Raise the limit of a bucket created
    elsewhere (by `nats kv add`, or an older ikto) before the mesh outgrows it (needs
    nats-server 2.12.5+; older servers do not cap it unless set, and cannot change it in place).

    \b
    Examples:
      ikto bucket -c /etc/ikto/ikto.json
      ikto bucket -c /etc/ikto/ikto.json --nats-creds /etc/ikto/admin.creds --max-consumers 20000
    """
    from ikto.admin import bucket_command

    if max_consumers is not None and max_consumers < 1:
        raise UsageError(f"--max-consumers {max_consumers}: must be at least 1")
    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    cfg = load_config(config, nats_url=nats_url, nats_creds=nats_creds, nats_kv=nats_kv)
    info = asyncio.run(bucket_command(cfg, max_consumers))
    if as_json:
        print(json.dumps(info.as_dict(), indent=2))
        return
    print("\n".join(show.bucket(info.as_dict())))


def nats_permissions(
    nodes: Annotated[
        list[str],
        typer.Argument(
            metavar="NODE",
            help="One per node, USER:PASSWORD:SUBNET: the node's NATS user and password and its "
            "pinned subnet, e.g. node1:PW1:198.19.11.0/24 or node2:PW2:fd10:6772:f964::/48.",
            show_default=False,
        ),
    ],
    admin: Annotated[
        str,
        typer.Option(
            metavar="USER:PASSWORD", help="The admin user, who creates the bucket.", show_default=False
        ),
    ],
    bucket: Annotated[str, typer.Option(help="The mesh's bucket (the nodes' nats_kv).")] = "ikto-mesh",
) -> None:
    """Print a nats-server `authorization` block in which each node may write only its own entry.

    A node may publish to its own entry ($KV.<bucket>.peers.<base64url of its subnet>) and
    presence record (alive.<same>), to the witness records (seen.*: what it sees of others),
    and to the JetStream API subjects that reading and watching the bucket need, never to
    $JS.>; so it cannot overwrite, delete or purge another node's entry, or delete the bucket. Each
    node's subnet must be fixed in advance: pin it with `ikto init --private-address`. The
    admin has every right and creates the bucket; run the nodes with "create_bucket": false.
    Users and passwords may not contain ':'. See docs/nats-permissions.md.

    \b
    Example (then `include ./ikto-auth.conf` in the server's config and reload it):
      ikto nats-permissions --admin admin:ADMIN-PW node1:PW1:198.19.11.0/24 \\
          node2:PW2:198.19.12.0/24 > /etc/nats/ikto-auth.conf
    """
    from ikto import natsauth
    from ikto.config import BUCKET_RE

    if not BUCKET_RE.match(bucket):
        raise UsageError(f"--bucket {bucket!r}: must be 1-64 characters of letters, digits, _ and -")
    try:
        users = [natsauth.parse_node(spec) for spec in nodes]
        block = natsauth.authorization(bucket, natsauth.parse_admin(admin), users)
    except ValueError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(block)
