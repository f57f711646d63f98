"""/metrics: the WireGuard series as mdlayher/wireguard_exporter names them and ikto's own,
from an agent against a real nats-server (2.15 and 2.9) with the OS seam faked."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from ipaddress import ip_network

import aiohttp
import pytest
from fakes import until
from test_agent import entry

from ikto import ipam

FAST = {"heartbeat_interval": 1.0, "stale_after": 2.0, "remove_after": 4.0, "reclaim_after": 4.0}


async def scrape(sock) -> str:
    conn = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=conn) as s, s.get("http://ikto/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()


def samples(text: str, name: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(name + "{") or ln.startswith(name + " ")]


async def test_metrics_on_the_admin_socket(start_agent, open_store):
    store = await open_store()
    e = entry("fd10:c1::/48", name="peer-one")
    await store.put(ipam.peer_key(ip_network("fd10:c1::/48")), json.dumps(e).encode())
    await store.put(ipam.peer_key(ip_network("fd10:c2::/48")), b"{not json")
    agent, wg = await start_agent("fd10:a1::", serve_api=True, **FAST)
    await until(lambda: e["public_key"] in wg.peers)
    await agent.applier.full_reconcile()  # a look at WireGuard: what the metrics are taken from
    text = await scrape(agent.config.admin_socket)
    dev = agent.config.wg_dev_name
    assert samples(text, "wireguard_device_info") == [
        f'wireguard_device_info{{device="{dev}",public_key="{agent.public_key}"}} 1.0'
    ]
    info = samples(text, "wireguard_peer_info")
    assert len(info) == 1 and 'name="peer-one"' in info[0] and 'allowed_ips="fd10:c1::/48"' in info[0]
    assert 'endpoint="198.18.0.50:51820"' in info[0]
    for name in ("wireguard_peer_receive_bytes_total", "wireguard_peer_transmit_bytes_total",
                 "wireguard_peer_last_handshake_seconds"):
        got = samples(text, name)
        assert len(got) == 1 and "endpoint" not in got[0], got  # a roaming peer adds no series
    assert 'ikto_peers{state="ok"} 1.0' in text
    assert "ikto_rejected_entries 1.0" in text
    assert "ikto_nats_connected 1.0" in text and "ikto_snapshot_loaded 1.0" in text
    assert samples(text, "ikto_wg_calls_total")[0].endswith(" 1.0")
    assert "ikto_apply_duration_seconds_count 1.0" in text
    assert 'ikto_build_info{version="' in text
    if shutil.which("promtool"):
        r = await asyncio.to_thread(
            subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr


async def test_per_peer_series_can_be_turned_off_and_tcp_serves_metrics(start_agent, open_store):
    store = await open_store()
    e = entry("fd10:c3::/48")
    await store.put(ipam.peer_key(ip_network("fd10:c3::/48")), json.dumps(e).encode())
    from ikto_lab.nats import free_port

    port = free_port()
    _, wg = await start_agent(
        "fd10:a2::", serve_api=True, metrics_per_peer=False, metrics_address=f"127.0.0.1:{port}", **FAST
    )
    await until(lambda: e["public_key"] in wg.peers)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
        assert r.status == 200
    assert samples(text, "wireguard_device_info") and not samples(text, "wireguard_peer_info")
    assert 'ikto_peers{state="ok"} 1.0' in text or 'ikto_peers{state="pending"} 1.0' in text
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/v1/status") as r:
        assert r.status == 404  # over TCP: metrics only, never the admin API


@pytest.mark.parametrize("bad", ["9586", "host:", ":9586", "h:0", "h:99999"])
def test_a_bad_metrics_address_is_refused(bad, make_config, nats_server):
    from ikto.config import ConfigError

    with pytest.raises(ConfigError, match="metrics_address"):
        make_config(nats_server.url, metrics_address=bad)


async def test_the_dashboard_and_the_alerts_use_series_we_export(start_agent, open_store):
    import re
    import shutil as sh
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
    promtool = sh.which("promtool")
    assert promtool, "promtool is missing (make deps installs Debian's prometheus)"
    r = subprocess.run([promtool, "check", "rules", str(docs / "alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    store = await open_store()
    e = entry("fd10:c5::/48")
    await store.put(ipam.peer_key(ip_network("fd10:c5::/48")), json.dumps(e).encode())
    agent, wg = await start_agent("fd10:a5::", serve_api=True, **FAST)
    await until(lambda: e["public_key"] in wg.peers)
    await agent.applier.full_reconcile()
    text = await scrape(agent.config.admin_socket)
    exported = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}
    names = set()
    for doc in ("alerts.yml", "grafana-dashboard.json"):
        names |= set(re.findall(r"\b((?:wireguard|ikto)_[a-z_]+)", (docs / doc).read_text()))
    names.discard("wireguard_exporter")  # the exporter's name, in a comment
    base = {n.removesuffix("_bucket").removesuffix("_total").removesuffix("_info") for n in exported}
    missing = {n for n in names if n not in exported and n.removesuffix("_bucket").removesuffix("_total")
               .removesuffix("_info") not in base}
    assert not missing, f"the docs use series we do not export: {missing}"
