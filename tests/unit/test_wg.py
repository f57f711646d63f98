"""The OS seam with a fake runner: whole argv sequences, parsers from fixture text, errors."""

from __future__ import annotations

import logging
from ipaddress import ip_address, ip_interface
from pathlib import Path

import pytest

from ikto import wg
from ikto.models import PeerConfig, Plan, WgPeer
from ikto.wg import Wg, WgError
from ikto.wgfacts import parse_dump, parse_ip_addr

K1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
K2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
K3 = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="


class FakeRunner:
    """Records every argv; answers from a table keyed by argv tuple (default: "")."""

    def __init__(self, outputs: dict[tuple[str, ...], str | WgError] | None = None):
        self.calls: list[list[str]] = []
        self.stdins: list[str | None] = []
        self.outputs = outputs or {}

    def __call__(self, argv: list[str], stdin: str | None = None) -> str:
        self.calls.append(list(argv))
        self.stdins.append(stdin)
        out = self.outputs.get(tuple(argv), "")
        if isinstance(out, WgError):
            raise out
        return out


def pc(key: str, *ips: str, endpoint: str = "198.18.0.2:51820", keepalive: int = 25) -> PeerConfig:
    return PeerConfig(public_key=key, allowed_ips=ips, endpoint=endpoint, persistent_keepalive=keepalive)


# apply

def test_apply_is_one_wg_set_with_removes_before_sets():
    r = FakeRunner()
    plan = Plan(
        set=(
            pc(K1, "fd10:1::/48"),
            pc(K2, "fd10:2::/48", "10.0.0.0/24", endpoint="[fd00::2]:51821", keepalive=0),
        ),
        remove=(K3,),
    )
    Wg("wg-ikto", runner=r).apply(plan)
    assert r.calls == [[
        "wg", "set", "wg-ikto",
        "peer", K3, "remove",
        "peer", K1, "allowed-ips", "fd10:1::/48", "endpoint", "198.18.0.2:51820",
        "persistent-keepalive", "25",
        "peer", K2, "allowed-ips", "fd10:2::/48,10.0.0.0/24", "endpoint", "[fd00::2]:51821",
        "persistent-keepalive", "off",
    ]]


def test_apply_of_an_empty_plan_runs_nothing():
    r = FakeRunner()
    Wg("wg-ikto", runner=r).apply(Plan())
    assert r.calls == []


def test_apply_peer_without_allowed_ips_or_endpoint():
    r = FakeRunner()
    Wg("wg0", runner=r).apply(Plan(set=(pc(K1, endpoint=""),)))
    assert r.calls == [["wg", "set", "wg0", "peer", K1, "allowed-ips", "", "persistent-keepalive", "25"]]


def test_huge_plan_is_split_into_chunks_keeping_removes_first():
    keys = [f"{i:043d}=" for i in range(2500)]
    plan = Plan(set=tuple(pc(k, "fd10:1::/48") for k in keys[:1500]), remove=tuple(keys[1500:]))
    r = FakeRunner()
    Wg("wg0", runner=r).apply(plan)
    assert len(r.calls) == 3
    assert all(c[:3] == ["wg", "set", "wg0"] for c in r.calls)
    flat = [a for c in r.calls for a in c[3:]]
    peers = [flat[i + 1] for i, a in enumerate(flat) if a == "peer"]
    assert peers == keys[1500:] + keys[:1500]
    assert max(len(c) for c in r.calls) < 10_000


# the other commands

def test_public_key_passes_the_private_key_on_stdin_only():
    r = FakeRunner({("wg", "pubkey"): K2 + "\n"})
    assert Wg("wg0", runner=r).public_key(K1) == K2
    assert r.calls == [["wg", "pubkey"]] and r.stdins == [K1 + "\n"]


def test_public_key_rejects_garbage_output():
    with pytest.raises(WgError, match="printed no key"):
        Wg("wg0", runner=FakeRunner({("wg", "pubkey"): "oops\n"})).public_key(K1)


def test_netns_prefixes_every_argv():
    r = FakeRunner()
    w = Wg("wg0", netns="ns1", runner=r)
    w.apply(Plan(remove=(K1,)))
    w.up(Path("/etc/wireguard/wg0.conf"))
    assert r.calls == [
        ["ip", "netns", "exec", "ns1", "wg", "set", "wg0", "peer", K1, "remove"],
        ["ip", "netns", "exec", "ns1", "wg-quick", "up", "/etc/wireguard/wg0.conf"],
    ]


def test_up_down_configure_syncconf_argv():
    r = FakeRunner()
    w = Wg("wg0", runner=r)
    w.up(Path("/etc/wireguard/wg0.conf"))
    w.configure(51820, Path("/etc/ikto/key"))
    w.syncconf("[Interface]\nPrivateKey = secret\n")
    w.down(Path("/etc/wireguard/wg0.conf"))
    assert r.calls == [
        ["wg-quick", "up", "/etc/wireguard/wg0.conf"],
        ["wg", "set", "wg0", "listen-port", "51820", "private-key", "/etc/ikto/key"],
        ["wg", "syncconf", "wg0", "/dev/stdin"],
        ["wg-quick", "down", "/etc/wireguard/wg0.conf"],
    ]
    assert r.stdins == [None, None, "[Interface]\nPrivateKey = secret\n", None]


def test_exists_is_false_only_for_a_missing_device():
    argv = ("ip", "-j", "link", "show", "dev", "wg0")
    missing = WgError(list(argv), 1, 'Device "wg0" does not exist.\n')
    assert Wg("wg0", runner=FakeRunner({argv: missing})).exists() is False
    assert Wg("wg0", runner=FakeRunner({argv: '[{"ifname":"wg0"}]'})).exists() is True
    other = WgError(["ip", "netns", "exec", "nope", *argv], 255, 'Cannot open network namespace "nope"')
    with pytest.raises(WgError):
        Wg("wg0", runner=FakeRunner({argv: other})).exists()


def test_delete_ignores_a_missing_device_only():
    argv = ("ip", "link", "del", "dev", "wg0")
    r = FakeRunner({argv: WgError(list(argv), 1, 'Cannot find device "wg0"\n')})
    Wg("wg0", runner=r).delete()
    assert r.calls == [list(argv)]
    r = FakeRunner({argv: WgError(list(argv), 2, "RTNETLINK answers: Operation not permitted\n")})
    with pytest.raises(WgError):
        Wg("wg0", runner=r).delete()


IP_ADDR_JSON = (
    '[{"ifindex":2,"ifname":"wg0","flags":["POINTOPOINT","NOARP","UP","LOWER_UP"],"mtu":1420,'
    '"addr_info":[{"family":"inet","local":"10.42.7.0","prefixlen":16,"scope":"global"},'
    '{"family":"inet6","local":"fd10:1::","prefixlen":16,"scope":"global"},'
    '{"family":"inet6","local":"fe80::c894:2834:6055:40db","prefixlen":64,"scope":"link"}]}]'
)


def test_ensure_address_adds_only_a_missing_address():
    show = ("ip", "-j", "addr", "show", "dev", "wg0")
    r = FakeRunner({show: IP_ADDR_JSON})
    w = Wg("wg0", runner=r)
    w.ensure_address(ip_interface("fd10:1::/16"), 1380)
    w.ensure_address(ip_interface("fd10:2::/16"), None)
    assert r.calls == [
        list(show),
        ["ip", "link", "set", "dev", "wg0", "mtu", "1380", "up"],
        list(show),
        ["ip", "-6", "addr", "add", "fd10:2::/16", "dev", "wg0"],
        ["ip", "link", "set", "dev", "wg0", "up"],
    ]


# parsers

DUMP = (
    "cGgXlf1VwpE3TRbG81VUcSCBzK3cKcOmX2h5HpP4e1E=\tM0Wtzy8rqHW8cBTWE5lvx3ZX7v1YeE2C5O6JyN9WKm4=\t51820\toff\n"
    f"{K1}\t(none)\t198.18.0.2:51820\tfd10:2::/48\t1700000000\t1024\t2048\t25\n"
    f"{K2}\t(none)\t[fd00::3]:51821\tfd10:3::/48,10.9.0.0/24\t0\t0\t0\toff\n"
    f"{K3}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_dump():
    dev = parse_dump(DUMP)
    assert dev.public_key == "M0Wtzy8rqHW8cBTWE5lvx3ZX7v1YeE2C5O6JyN9WKm4="
    assert (dev.listen_port, dev.fwmark) == (51820, 0)
    assert list(dev.peers) == [K1, K2, K3]
    assert dev.peers[K1] == WgPeer(K1, "198.18.0.2:51820", ("fd10:2::/48",), 1700000000, 1024, 2048, 25)
    assert dev.peers[K2] == WgPeer(K2, "[fd00::3]:51821", ("fd10:3::/48", "10.9.0.0/24"), 0, 0, 0, 0)
    assert dev.peers[K3] == WgPeer(K3, None, (), 0, 0, 0, 0)


def test_parse_dump_hex_fwmark_no_key_no_peers():
    dev = parse_dump("(none)\t(none)\t0\t0xca6c\n")
    assert (dev.public_key, dev.listen_port, dev.fwmark, dev.peers) == ("", 0, 0xCA6C, {})


def test_parse_dump_rejects_garbage():
    with pytest.raises(ValueError):
        parse_dump("")
    with pytest.raises(ValueError):
        parse_dump("a\tb\n")


def test_dump_runs_wg_show_dump():
    r = FakeRunner({("wg", "show", "wg0", "dump"): DUMP})
    assert len(Wg("wg0", runner=r).dump().peers) == 3


def test_parse_ip_addr():
    assert parse_ip_addr(IP_ADDR_JSON) == [
        ip_interface("10.42.7.0/16"),
        ip_interface("fd10:1::/16"),
        ip_interface("fe80::c894:2834:6055:40db/64"),
    ]
    assert parse_ip_addr('[{"ifname":"wg0","addr_info":[]}]') == []
    assert parse_ip_addr("") == []


def test_default_source_address_tries_ipv4_then_ipv6():
    v4 = ("ip", "-j", "route", "get", "192.0.2.1")
    v6 = ("ip", "-j", "route", "get", "2001:db8::1")
    unreachable = WgError(list(v4), 2, "RTNETLINK answers: Network is unreachable\n")
    route6 = '[{"dst":"2001:db8::1","gateway":"fd00::1","dev":"eth0","prefsrc":"fd00::2"}]'
    r = FakeRunner({v4: unreachable, v6: route6})
    assert wg.default_source_address(r) == ip_address("fd00::2")
    assert r.calls == [list(v4), list(v6)]
    route4 = '[{"dst":"192.0.2.1","gateway":"10.0.0.1","dev":"eth0","prefsrc":"10.0.0.5"}]'
    assert wg.default_source_address(FakeRunner({v4: route4})) == ip_address("10.0.0.5")
    v6_unreachable = WgError(list(v6), 2, "RTNETLINK answers: Network is unreachable\n")
    assert wg.default_source_address(FakeRunner({v4: unreachable, v6: v6_unreachable})) is None


# errors

def test_wgerror_message_is_one_actionable_line():
    e = WgError(["ip", "link", "add", "wg-ikto", "type", "wireguard"], 2,
                "RTNETLINK answers: Operation not permitted\n")
    assert str(e) == (
        "ip link add wg-ikto type wireguard: exited 2: RTNETLINK answers: Operation not permitted "
        "(run as root or grant CAP_NET_ADMIN)"
    )
    assert (e.argv, e.exit_code) == (["ip", "link", "add", "wg-ikto", "type", "wireguard"], 2)


def test_wgerror_missing_interface_hint():
    e = WgError(["wg", "show", "wg0", "dump"], 1, "Unable to access interface: No such device\n")
    assert str(e) == (
        "wg show wg0 dump: exited 1: Unable to access interface: No such device "
        "(the WireGuard interface does not exist; is the agent running?)"
    )


def test_wgerror_wg_quick_without_wireguard_go():
    stderr = "[#] ip link add wg0 type wireguard\nError: Unknown device type.\n" \
             '[#] ip link delete dev wg0\nCannot find device "wg0"\n'
    e = WgError(["wg-quick", "up", "/etc/wireguard/wg0.conf"], 1, stderr)
    assert str(e) == (
        "wg-quick up /etc/wireguard/wg0.conf: exited 1: Error: Unknown device type. "
        "(no WireGuard kernel module and no wireguard-go: install wireguard-go)"
    )
    assert "\n" not in str(e)


def test_wgerror_wg_quick_names_the_failing_step_not_the_cleanup():
    stderr = (
        "[#] ip link add wg0 type wireguard\nError: Unknown device type.\n"
        "[!] Missing WireGuard kernel module. Falling back to slow userspace implementation.\n"
        "[#] wireguard-go wg0\n┌────┐\n│ Running wireguard-go is not required │\n└────┘\n"
        "[#] wg setconf wg0 /dev/fd/63\nLine unrecognized: `Bogus=1'\nConfiguration parsing error\n"
        "[#] ip link delete dev wg0\n"
    )
    e = WgError(["wg-quick", "up", "wg0.conf"], 1, stderr)
    assert str(e) == "wg-quick up wg0.conf: exited 1: Line unrecognized: `Bogus=1'"


def test_wgerror_missing_program_inside_netns():
    e = WgError(["ip", "netns", "exec", "ns1", "wg", "show"], 255,
                'exec of "wg" failed: No such file or directory\n')
    assert str(e).endswith('exec of "wg" failed: No such file or directory (install wireguard-tools)')


def test_sh_runner_missing_binary(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(wg.PACKAGES, "ikto-no-such-tool", "the-package")
    with pytest.raises(WgError) as ei:
        wg.sh_runner(["ikto-no-such-tool", "x"])
    assert str(ei.value) == "ikto-no-such-tool: command not found (install the-package)"
    assert ei.value.exit_code == 127


def test_sh_runner_real_commands_and_logging(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="ikto.wg")
    assert wg.sh_runner(["cat"], "secret-key\n") == "secret-key\n"
    with pytest.raises(WgError) as ei:
        wg.sh_runner(["sh", "-c", "echo oops >&2; exit 3"])
    assert (ei.value.exit_code, ei.value.stderr) == (3, "oops\n")
    assert str(ei.value) == "sh -c 'echo oops >&2; exit 3': exited 3: oops"
    assert "[#] cat" in caplog.text
    assert "secret-key" not in caplog.text


def test_sh_runner_drops_log_level(monkeypatch: pytest.MonkeyPatch):
    # wireguard-go's daemon would keep our pipes open with LOG_LEVEL set (see wg._env).
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert wg.sh_runner(["sh", "-c", 'echo "${LOG_LEVEL-unset} $LC_ALL"']) == "unset C\n"


def test_parse_routes_keeps_ours_only():
    from ikto.wgfacts import parse_routes

    v4 = ('[{"dst":"default","scope":"link","flags":[]},{"dst":"10.9.0.0/16","protocol":"kernel",'
          '"scope":"link","prefsrc":"10.9.0.1","flags":[]},{"dst":"10.50.0.0/24","scope":"link","flags":[]}]')
    v6 = ('[{"dst":"fd10::/16","protocol":"kernel","metric":256,"flags":[]},{"dst":"fd99::/48",'
          '"metric":1024,"flags":[]},{"dst":"fe80::/64","protocol":"kernel","flags":[]},{"dst":"default","flags":[]}]')
    assert [str(n) for n in parse_routes(v4, 4)] == ["0.0.0.0/0", "10.50.0.0/24"]
    assert [str(n) for n in parse_routes(v6, 6)] == ["fd99::/48", "::/0"]
    assert parse_routes("", 4) == []
