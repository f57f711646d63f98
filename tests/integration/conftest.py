"""A real nats-server per test, run once with each supported version (2.15 and Debian's 2.9).

Fixtures for other integration tests:
- `nats_server`: a running server with JetStream (`.url`, `.version`, `.restart()`, `.stop()`).
- `make_config(url, **fields)`: a valid Config for a node, with a fresh private key file.
- `open_store(config=None, *, bucket=..., create=True)`: a connected Store with the bucket
  opened, closed after the test.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ikto.config import Config, load_config
from ikto.keys import write_private_key
from ikto.store import Store
from ikto_lab.nats import NatsServer, find_binary
from ikto_lab.shell import LabError

BUCKET = "ikto-test"


@pytest.fixture(params=["2.15", "2.9"])
def nats_server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., NatsServer]]:
    """Start extra servers of this test's version: factory(extra_args=[...])."""
    try:
        binary = find_binary(request.param)  # never skip: a missing version fails the test
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    servers: list[NatsServer] = []

    def factory(extra_args: list[str] | None = None) -> NatsServer:
        server = NatsServer.loopback(tmp_path_factory.mktemp("nats"), binary=binary, args=extra_args)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop(kill=True)
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def nats_server(nats_server_factory: Callable[..., NatsServer]) -> NatsServer:
    """A fresh nats-server with JetStream on a free port, once per supported version."""
    return nats_server_factory()


_names = itertools.count(1)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """make_config(url, **fields): a valid node Config with its own new private key file."""

    def make(url: str, **fields: Any) -> Config:
        n = next(_names)
        key_path = tmp_path / f"node{n}" / "private.key"
        write_private_key(key_path)
        values: dict[str, Any] = {
            "name": f"node{n}",
            "advertise_address": f"192.0.2.{n % 250 + 1}",
            "private_key_path": key_path,
            "nats_url": url,
            "nats_kv": BUCKET,
            "admin_socket": tmp_path / f"node{n}" / "ikto.sock",
            "config_dir": tmp_path / f"node{n}",
        }
        values.update(fields)
        return load_config(None, **values)

    return make


@pytest.fixture
async def open_store(
    nats_server: NatsServer, make_config: Callable[..., Config]
) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """open_store(config=None, *, create=True): a connected Store with the config's bucket open."""
    stores: list[Store] = []

    async def open_(config: Config | None = None, *, create: bool = True) -> Store:
        config = config or make_config(nats_server.url)
        store = await Store.connect(config)
        stores.append(store)
        await store.open_bucket(config.nats_kv, create=create)
        return store

    yield open_
    for store in stores:
        await store.close()


@pytest.fixture(autouse=True)
def _ikto_logs_on(caplog: pytest.LogCaptureFixture) -> None:
    """Log at DEBUG so every log call's fields are really formatted (a bad one raises)."""
    caplog.set_level(logging.DEBUG, logger="ikto")


@pytest.fixture
async def start_agent(
    nats_server: NatsServer, make_config: Callable[..., Config]
) -> AsyncIterator[Callable[..., Awaitable[tuple[Any, Any]]]]:
    """start_agent(private_address, serve_api=False, **fields): an in-process Agent against
    the test's nats-server with the OS seam faked; waits for its first full reconcile."""
    import asyncio
    import json

    from fakes import FakeWg, until

    from ikto.agent import Agent
    from ikto.api import serve

    started: list[tuple[Agent, asyncio.Task[int]]] = []

    async def start(addr: str, *, serve_api: bool = False, **fields: Any) -> tuple[Agent, FakeWg]:
        cfg = make_config(nats_server.url, private_address=addr, **fields)
        cfg_path = Path(cfg.config_dir) / "ikto.json"
        cfg_path.write_text(json.dumps(cfg.to_json_dict()))
        wg = FakeWg()
        a = Agent(cfg, cfg_path, wg=wg)  # type: ignore[arg-type]
        api = (lambda ag: serve(ag, cfg.admin_socket)) if serve_api else None
        started.append((a, asyncio.create_task(a.run(serve_api=api))))
        await until(lambda: a.applier.last_full_reconcile is not None)
        return a, wg

    yield start
    for a, t in started:
        a.stop()
        await asyncio.wait_for(t, 10)
