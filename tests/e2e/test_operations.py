"""Operations, end to end in a namespace lab: the whole-mesh view finds a broken pair, Prometheus
scrapes a node, and two meshes share the same hosts without mixing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikto_lab import NamespaceLab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get("IKTO_E2E_LAB", "namespaces") != "namespaces",
        reason="a namespace lab of its own (Prometheus on the host scrapes a node; CI runs it)",
    ),
]

STATE_DIR = Path(os.environ.get("IKTO_E2E_OPS_STATE_DIR", "/run/ikto-e2e-ops"))


@pytest.fixture(scope="module")
def lab() -> Iterator[NamespaceLab]:
    if os.geteuid() != 0:
        pytest.fail("the e2e suite needs root (network and mount namespaces, wireguard-go)")
    lab = NamespaceLab(STATE_DIR, name="ikto-ops")
    lab.down()
    try:
        lab.up(3)
        lab.wait_converged(60)
        yield lab
    finally:
        lab.down()


def sh(lab: NamespaceLab, node: str, script: str, timeout: float = 60.0) -> str:
    cp = lab.exec(node, ["sh", "-c", script], timeout=timeout)
    assert cp.returncode == 0, f"{node}: {script}: {cp.stdout}{cp.stderr}"
    return cp.stdout


def mesh_view(lab: NamespaceLab, node: str) -> dict:
    return json.loads(sh(lab, node, "ikto status --mesh --json"))


def test_the_mesh_view_finds_the_pair_that_cannot_talk(lab: NamespaceLab) -> None:
    a, b, observer = lab.members()[:3]
    ua, ub = lab.underlay(a), lab.underlay(b)
    assert mesh_view(lab, observer)["unreachable_pairs"] == []
    drop = f"iptables -I INPUT -p udp -s {ub} -j DROP && iptables -I OUTPUT -p udp -d {ub} -j DROP"
    undrop = f"iptables -D INPUT -p udp -s {ub} -j DROP; iptables -D OUTPUT -p udp -d {ub} -j DROP"
    sh(lab, a, drop)
    t0 = time.monotonic()
    try:
        while True:
            got = {tuple(p) for p in mesh_view(lab, observer)["unreachable_pairs"]}
            if got == {(a, b), (b, a)}:
                break
            if extra := got - {(a, b), (b, a)}:  # what the reporter's WireGuard showed, to debug
                views = {r: sh(lab, r, "ikto status --json; wg show wg-ikto dump") for r, _ in extra}
                pytest.fail(f"pairs that can talk reported: {got}\n{views}")
            assert time.monotonic() - t0 < 60, f"not reported within a minute: {got}"
            time.sleep(2)
        print(f"{a} <-> {b} reported by {observer} {time.monotonic() - t0:.0f} s after the drop")
        text = sh(lab, observer, "ikto status --mesh")
        assert f"3 nodes, 3 reporting, 2 pairs unreachable: {a} -> {b}, {b} -> {a}" in text, text
    finally:
        sh(lab, a, undrop)
    t1 = time.monotonic()
    while got := mesh_view(lab, observer)["unreachable_pairs"]:
        assert time.monotonic() - t1 < 60, f"not cleared within a minute: {got}"
        time.sleep(2)
    print(f"cleared {time.monotonic() - t1:.0f} s after the fix; ua={ua}")
    lab.wait_converged(30)


PROM = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ikto
    static_configs:
      - targets: ["127.0.0.1:9586"]
"""


def test_prometheus_scrapes_a_node(lab: NamespaceLab, tmp_path: Path) -> None:
    node = lab.members()[0]
    others = len(lab.members()) - 1
    (tmp_path / "prometheus.yml").write_text(PROM)
    lab.stop_agent(node)
    lab.set_config(node, metrics_address="127.0.0.1:9586")
    lab.start_agent(node)
    data = tmp_path / "data"
    prom = (
        f"prometheus --config.file={tmp_path}/prometheus.yml --storage.tsdb.path={data} "
        f"--web.listen-address=127.0.0.1:9590 > {tmp_path}/prometheus.log 2>&1 & echo $!"
    )
    pid = sh(lab, node, prom).strip()
    try:
        query = "curl -sf 'http://127.0.0.1:9590/api/v1/query?query={q}'"
        deadline = time.monotonic() + 60
        while True:
            out = lab.exec(node, ["sh", "-c", query.format(q="count(wireguard_peer_info)")]).stdout
            result = json.loads(out)["data"]["result"] if out.strip() else []
            if result and int(result[0]["value"][1]) == others:
                break
            assert time.monotonic() < deadline, f"Prometheus did not get the peers: {out}"
            time.sleep(1)
        up = json.loads(sh(lab, node, query.format(q="ikto_nats_connected")))["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        hs = json.loads(sh(lab, node, query.format(q="wireguard_peer_last_handshake_seconds")))
        assert len(hs["data"]["result"]) == others
    finally:
        lab.exec(node, ["kill", pid])
        lab.stop_agent(node)
        lab.set_config(node, metrics_address=None)
        lab.start_agent(node)


def test_two_meshes_share_the_nodes_and_stay_apart(lab: NamespaceLab) -> None:
    nodes = lab.members()
    red = {n: lab.wg_device(n) for n in nodes}
    for n in nodes:
        sh(lab, n, (
            "ikto init -m fd20::/16 -p 48 --nats-kv blue --wg-dev-name wg-blue --wg-port 51821 "
            f"--private-key-path /etc/ikto/blue.key --nats-url {lab.nats_url()} "
            f"--advertise-address {lab.underlay(n)} --name {n}-blue -o /etc/ikto/blue.json --force"
        ))
        sh(lab, n, f"nohup ikto agent -c /etc/ikto/blue.json > /tmp/{lab.netns(n)}-blue.log 2>&1 &")
    try:
        deadline = time.monotonic() + 60
        while True:
            blue = {n: json.loads(sh(lab, n, "ikto status -c /etc/ikto/blue.json --json")) for n in nodes}
            if all(len(b["peers"]) == len(nodes) - 1 and all(p["in_wireguard"] for p in b["peers"])
                   for b in blue.values()):
                break
            assert time.monotonic() < deadline, {n: len(b["peers"]) for n, b in blue.items()}
            time.sleep(1)
        blue_keys = {b["node"]["public_key"] for b in blue.values()}
        red_keys = {d.public_key for d in red.values()}
        assert not blue_keys & red_keys
        for n in nodes:
            red_now = lab.wg_device(n)
            assert set(red_now.peers) <= red_keys and red_now.peer_set() == red[n].peer_set()
            blue_wg = sh(lab, n, "wg show wg-blue peers").split()
            assert set(blue_wg) <= blue_keys and not set(blue_wg) & red_keys
            # with two agents here, plain `ikto status` asks which one
            cp = lab.exec(n, ["ikto", "status"])
            assert cp.returncode == 2 and "several agents run here" in cp.stderr, cp.stderr
        a, b = nodes[0], nodes[1]
        b_addr = blue[b]["node"]["address"].split("/")[0]
        sh(lab, a, f"ping -c 1 -w 10 {b_addr}")
    finally:
        for n in nodes:
            lab.exec(n, ["ikto", "leave", "--down", "-c", "/etc/ikto/blue.json"])
    lab.wait_converged(30)
