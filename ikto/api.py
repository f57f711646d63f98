"""The admin API: HTTP with JSON bodies on a unix socket (aiohttp), and its client.

    curl --unix-socket /run/ikto/ikto.sock http://ikto/v1/status

Routes: GET /v1/node, /v1/peers, /v1/rejected, /v1/health, /v1/status (all of them);
GET /v1/mesh (every node's report: whom it cannot reach); GET /metrics (Prometheus text; also
over TCP at metrics_address);
POST /v1/leave[?down=1] (remove our entry, optionally the interface, then stop);
POST /v1/rotate-key (a new WireGuard key, then the agent restarts with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ikto import views
from ikto.errors import IktoError
from ikto.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from ikto.agent import Agent

AGENT_KEY = web.AppKey("agent", object)


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]  # type: ignore[return-value]


async def _node(request: web.Request) -> web.Response:
    return web.json_response(views.node(_agent(request)))


async def _health(request: web.Request) -> web.Response:
    h = views.health(_agent(request))
    return web.json_response(h, status=200 if h["ok"] else 503)


async def _peers(request: web.Request) -> web.Response:
    return web.json_response(await views.peers(_agent(request)))


async def _rejected(request: web.Request) -> web.Response:
    return web.json_response(views.rejected(_agent(request)))


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await views.status(_agent(request)))


async def _leave(request: web.Request) -> web.Response:
    down = request.query.get("down", "0") in ("1", "true", "yes")
    try:
        await _agent(request).leave(down)
    except IktoError as e:
        return web.json_response({"error": str(e)}, status=409)
    return web.json_response({"left": True, "interface_removed": down})


async def _rotate_key(request: web.Request) -> web.Response:
    try:
        public = await _agent(request).rotate_key()
    except IktoError as e:
        return web.json_response({"error": str(e)}, status=409)
    return web.json_response({"rotated": True, "public_key": public})


async def _mesh(request: web.Request) -> web.Response:
    try:
        return web.json_response(await views.mesh(_agent(request)))
    except IktoError as e:
        return web.json_response({"error": str(e)}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    agent = _agent(request)
    agent.metrics.update(views.metrics_sample(agent))  # on the loop: a snapshot of the parts
    body = await asyncio.to_thread(agent.metrics.render)  # formatting in a worker thread
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/v1/node", _node)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/v1/peers", _peers)
    app.router.add_get("/v1/rejected", _rejected)
    app.router.add_get("/v1/status", _status)
    app.router.add_post("/v1/leave", _leave)
    app.router.add_get("/v1/mesh", _mesh)
    app.router.add_post("/v1/rotate-key", _rotate_key)
    app.router.add_get("/metrics", _metrics)
    return app


async def _socket_in_use(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def serve(agent: Agent, path: Path) -> Callable[[], Awaitable[None]]:
    """Serve the admin API on a 0600 unix socket; returns the cleanup coroutine."""
    if path.exists() or path.is_symlink():
        if await _socket_in_use(path):
            raise IktoError(f"admin socket {path} is in use: is another ikto agent running?")
        path.unlink()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    runner = web.AppRunner(make_app(agent), access_log=None, handle_signals=False)
    await runner.setup()
    old = os.umask(0o077)
    try:
        site = web.UnixSite(runner, str(path))
        await site.start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)

    tcp = await _serve_metrics(agent, agent.config.metrics_address) if agent.config.metrics_address else None

    async def cleanup() -> None:
        await runner.cleanup()
        if tcp is not None:
            await tcp.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return cleanup


async def _serve_metrics(agent: Agent, address: str) -> web.AppRunner:
    """/metrics (and nothing else) over TCP, for Prometheus."""
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = address.rpartition(":")
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as e:
        await runner.cleanup()
        raise IktoError(f"metrics_address {address}: {e.strerror or e} (is the port in use?)") from None
    return runner


async def _request(socket: Path, method: str, route: str) -> Any:
    if not socket.exists():
        raise IktoError(
            f"no agent socket at {socket} (is `ikto agent` running? pass -s to choose the socket)"
        )
    conn = aiohttp.UnixConnector(path=str(socket))
    try:
        async with (
            aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s,
            s.request(method, f"http://ikto{route}") as r,
        ):
            body = await r.json()
            if r.status >= 400 and not (route == "/v1/health" and r.status == 503):
                raise IktoError(f"agent answered {r.status}: {body.get('error', body)}")
            return body
    except PermissionError:
        raise IktoError(f"admin socket {socket}: permission denied (run as root)") from None
    except (aiohttp.ClientConnectionError, ConnectionRefusedError) as e:
        raise IktoError(f"cannot reach the agent at {socket}: {e}") from None
    except (json.JSONDecodeError, aiohttp.ContentTypeError):
        raise IktoError(f"the agent at {socket} sent a malformed answer") from None


def call(socket: Path, method: str, route: str) -> Any:
    """Call the admin API of a running agent (synchronously, for the CLI)."""
    return asyncio.run(_request(socket, method, route))
