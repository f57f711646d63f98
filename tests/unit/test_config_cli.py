"""Config loading/validation and the CLI's user-facing behaviour (one line, exit 2)."""

import json
import os
import subprocess
import sys
from ipaddress import ip_address, ip_network

import pytest

from ikto import keys
from ikto.config import ConfigError, load_config


def ikto(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ikto", *args],
        capture_output=True, text=True, input=stdin, env={**os.environ, **(env or {})}, timeout=60,
    )


@pytest.mark.parametrize(("mesh", "prefix"), [("fd10::/16", 48), ("10.42.0.0/16", 24)])
def test_init_gives_a_loadable_config_with_a_good_key(tmp_path, mesh, prefix):
    keyp = tmp_path / "etc" / "private.key"
    out = tmp_path / "ikto.json"
    r = ikto("init", "-m", mesh, "-p", str(prefix), "--private-key-path", str(keyp),
             "--advertise-address", "198.18.0.11", "--name", "n1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    assert cfg.subnet.subnet_of(ip_network(mesh)) and cfg.subnet.prefixlen == prefix
    assert cfg.private_address == cfg.subnet.network_address
    assert oct(keyp.stat().st_mode & 0o777) == "0o600"
    pub = subprocess.run(["wg", "pubkey"], input=keyp.read_text(), capture_output=True, text=True).stdout
    assert pub.strip() == keys.public_key(keyp.read_text())
    r2 = ikto("check", "-c", str(out))
    assert r2.returncode == 0, r2.stderr


# A stand-in for `ip` on PATH: records its argv, answers `ip -j route get` as the host would
# with a default route (ROUTE) or without one (exit 2, "Network is unreachable").
FAKE_IP = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  "-j route get "*) ;;
  *) echo "fake ip: unexpected call: $*" >&2; exit 1 ;;
esac
if [ -n "$FAKE_IP_ROUTE" ]; then echo "$FAKE_IP_ROUTE"; exit 0; fi
echo "RTNETLINK answers: Network is unreachable" >&2
exit 2
"""
ROUTE = '[{"dst":"192.0.2.1","gateway":"198.18.0.254","dev":"eth0","prefsrc":"198.18.0.42","flags":[]}]'


def init_with_fake_ip(tmp_path, route: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`ikto init` to stdout with `ip` faked: route is what `ip -j route get` prints (None: no route)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(FAKE_IP)
    (bin_dir / "ip").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_IP_ROUTE": route or ""}
    r = ikto("init", "--private-key-path", str(tmp_path / "k"), "--name", "x", env=env)
    calls = (bin_dir / "calls").read_text().splitlines() if (bin_dir / "calls").exists() else []
    return r, calls


def test_init_prints_to_stdout_and_defaults_advertise_from_route(tmp_path):
    r, calls = init_with_fake_ip(tmp_path, ROUTE)
    assert r.returncode == 0, r.stderr
    assert calls == ["-j route get 192.0.2.1"]
    data = json.loads(r.stdout)
    assert data["mesh_cidr"] == "fd10::/16" and data["subnet_prefix"] == 48
    assert data["wg_dev_name"] == "wg-ikto" and data["wg_port"] == 51820 and data["nats_kv"] == "ikto-mesh"
    assert ip_address(data["advertise_address"]) == ip_address("198.18.0.42")


def test_init_warns_when_the_address_it_picked_is_private(tmp_path):
    private = ROUTE.replace("198.18.0.42", "192.168.1.5")
    r, _ = init_with_fake_ip(tmp_path, private)
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warning) == 1 and warning[0].startswith("ikto: warning: 192.168.1.5")
    assert "--advertise-address" in warning[0] and "NAT traversal" in warning[0]
    # a public address (only ever printed by the fake `ip`, never contacted) gets no warning
    public = ROUTE.replace("198.18.0.42", "9.9.9.9")
    (tmp_path / "p").mkdir()
    r, _ = init_with_fake_ip(tmp_path / "p", public)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_init_without_a_default_route_says_to_pass_the_address(tmp_path):
    r, calls = init_with_fake_ip(tmp_path, None)
    assert calls == ["-j route get 192.0.2.1", "-j route get 2001:db8::1"]  # IPv4, then IPv6
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ikto: ") and "--advertise-address" in lines[0], r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "fd10::/zz"], "--mesh-ip-net"),
        (["-m", "fd10::1/16"], "--mesh-ip-net"),
        (["-p", "8"], "must be longer than the mesh"),
        (["-m", "10.0.0.0/8", "-p", "40"], "at most /32"),
        (["--private-address", "fd11::"], "outside the mesh"),
        (["--advertise-address", "127.0.0.1"], "loopback"),
        (["--bogus"], "No such option"),
    ],
)
def test_init_bad_input_one_line_exit_2(tmp_path, args, needle):
    r = ikto("init", "--private-key-path", str(tmp_path / "k"), "--advertise-address", "198.18.0.1", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ikto: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def _cfg(tmp_path, **over):
    keyp = tmp_path / "private.key"
    keys.write_private_key(keyp)
    data = {
        "name": "n1", "advertise_address": "198.18.0.11", "private_address": "fd10:1:2::",
        "subnet_prefix": 48, "mesh_cidr": "fd10::/16", "wg_dev_name": "wg-ikto", "wg_port": 51820,
        "private_key_path": str(keyp), "nats_creds": "", "nats_url": "nats://127.0.0.1:4222",
        "nats_kv": "ikto-mesh",
    }
    data.update(over)
    p = tmp_path / "ikto.json"
    p.write_text(json.dumps(data))
    return p, keyp


def test_v03_config_loads_unchanged(tmp_path):
    p, _ = _cfg(tmp_path)
    cfg = load_config(p)
    assert cfg.nats_creds is None and cfg.wg_dev_name == "wg-ikto"
    assert str(cfg.interface_address) == "fd10:1:2::/16"


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    p, _ = _cfg(tmp_path, wg_port=1000)
    assert load_config(p).wg_port == 1000
    monkeypatch.setenv("IKTO_WG_PORT", "2000")
    assert load_config(p).wg_port == 2000
    assert load_config(p, wg_port=3000).wg_port == 3000


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"private_address": "fd11::"}, "private_address: fd11:: is outside the mesh"),
        ({"private_address": "fd10:1:2::5"}, "not aligned"),
        ({"subnet_prefix": 8}, "subnet_prefix"),
        ({"mesh_cidr": "nonsense"}, "mesh_cidr"),
        ({"wg_port": 70000}, "wg_port"),
        ({"unknown_thing": 1}, "unknown_thing: unknown field"),
        ({"advertise_address": "fd10:5::1"}, "inside the mesh"),
    ],
)
def test_bad_config_one_line_per_field(tmp_path, over, needle):
    p, _ = _cfg(tmp_path, **over)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)
    r = ikto("check", "-c", str(p))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_key_file_0644_refused_with_fix(tmp_path):
    p, keyp = _cfg(tmp_path)
    os.chmod(keyp, 0o644)
    r = ikto("check", "-c", str(p))
    assert r.returncode == 2 and "chmod 600" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_and_broken_config_files(tmp_path):
    r = ikto("check", "-c", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "bad.json").write_text("{")
    r = ikto("check", "-c", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_keygen_pubkey_compatible_with_wg():
    priv = ikto("keygen").stdout
    pub = ikto("pubkey", stdin=priv).stdout
    wgpub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True).stdout
    assert pub == wgpub
    bad = ikto("pubkey", stdin="nope")
    assert bad.returncode == 2 and bad.stderr.startswith("ikto: ")


@pytest.mark.parametrize("cmd", ["init", "agent", "info", "status", "leave", "keygen", "pubkey", "check"])
def test_every_command_has_help(cmd):
    r = ikto(cmd, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout and len(r.stdout.splitlines()) > 3


def test_info_without_agent_is_one_line(tmp_path):
    r = ikto("info", "-s", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "is `ikto agent` running" in r.stderr


def test_each_mesh_on_a_host_gets_its_own_admin_socket(tmp_path):
    key = tmp_path / "k"
    keys.write_private_key(key)
    base = {"advertise_address": "198.18.0.5", "private_address": "fd10:1::", "private_key_path": str(key)}
    assert load_config(None, **base).socket.as_posix() == "/run/ikto/ikto.sock"  # as before
    assert load_config(None, wg_dev_name="wg-blue", **base).socket.as_posix() == "/run/ikto/wg-blue.sock"
    assert load_config(None, admin_socket="/tmp/x.sock", **base).socket.as_posix() == "/tmp/x.sock"


def test_status_asks_which_mesh_when_several_agents_run(tmp_path, monkeypatch):
    import ikto.cli_opts
    from ikto.errors import UsageError

    monkeypatch.setattr(ikto.cli_opts, "socket_dir", lambda: tmp_path)
    assert ikto.cli_opts.socket_of(None, None).as_posix() == "/run/ikto/ikto.sock"  # none: the default
    (tmp_path / "ikto.sock").touch()
    assert ikto.cli_opts.socket_of(None, None) == tmp_path / "ikto.sock"  # one: that one
    (tmp_path / "wg-blue.sock").touch()
    with pytest.raises(UsageError, match=r"several agents run here \(ikto.sock, wg-blue.sock.*-c /etc/ikto"):
        ikto.cli_opts.socket_of(None, None)
    assert ikto.cli_opts.socket_of(tmp_path / "wg-blue.sock", None) == tmp_path / "wg-blue.sock"
