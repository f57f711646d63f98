"""What the lab reads from a node (`wg show dump`, `ip -j addr`, mountinfo), from captured output."""

from __future__ import annotations

from ipaddress import ip_address

from ikto.wgfacts import parse_dump as parse_wg_dump
from ikto_lab.driver import parse_view
from ikto_lab.facts import mounts_under

DUMP = (
    "cHJpdg==\tWD8fyyfMWJYHlf0ATZOoiZ5lGl5jSD/YUBC2HZjyDAc=\t51820\toff\n"
    "UGw2n+lQqximbbethV9UIaPPG56rni2BfAEr2fIZQF0=\t(none)\t198.18.0.13:51820\t198.19.3.0/24\t"
    "1764108000\t920\t1012\t25\n"
    "J+MDDtnlmyj9EFHnAOW+MeeDB8vR3ztMMAWYVbV4c3M=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)
IP_ADDR = (
    '[{"ifname":"wg-ikto","addr_info":[{"family":"inet","local":"198.19.1.0","prefixlen":16,'
    '"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]'
)


def test_wg_dump() -> None:
    dev = parse_wg_dump(DUMP)
    assert dev.public_key == "WD8fyyfMWJYHlf0ATZOoiZ5lGl5jSD/YUBC2HZjyDAc="
    assert dev.listen_port == 51820
    p = dev.peers["UGw2n+lQqximbbethV9UIaPPG56rni2BfAEr2fIZQF0="]
    assert (p.endpoint, p.allowed_ips, p.rx_bytes, p.tx_bytes) == (
        "198.18.0.13:51820",
        ("198.19.3.0/24",),
        920,
        1012,
    )
    bare = dev.peers["J+MDDtnlmyj9EFHnAOW+MeeDB8vR3ztMMAWYVbV4c3M="]
    assert (bare.endpoint, bare.allowed_ips) == (None, ())


def test_peer_set_ignores_counters() -> None:
    later = DUMP.replace("\t920\t1012\t", "\t5000\t6000\t")
    assert parse_wg_dump(DUMP).peer_set() == parse_wg_dump(later).peer_set()
    moved = DUMP.replace("198.18.0.13:51820", "198.18.0.99:51820")
    assert parse_wg_dump(DUMP).peer_set() != parse_wg_dump(moved).peer_set()


def test_view_of_a_node_without_device() -> None:
    sep = "@@ikto-lab@@"
    view = parse_view(f"{sep}\n{sep}\n" + '{"advertise_address": "198.18.0.11"}')
    assert (view.device, view.address, view.endpoint) == (None, None, "198.18.0.11:51820")
    full = parse_view(f"{DUMP}{sep}\n{IP_ADDR}\n{sep}\n{{}}")
    assert full.address == ip_address("198.19.1.0") and full.endpoint is None


def test_mounts_under_deepest_first() -> None:
    info = (
        "36 25 0:5 / /run/lab/ns rw - ext4 /dev/vda rw\n"
        "40 36 0:4 mnt:[1] /run/lab/ns/node1.mnt rw - nsfs nsfs rw\n"
        "41 25 0:5 / /run/lab2 rw - ext4 /dev/vda rw\n"
        "42 25 0:5 / /run/lab/a\\040b rw - ext4 /dev/vda rw\n"
    )
    assert mounts_under(info, "/run/lab") == ["/run/lab/ns/node1.mnt", "/run/lab/a b", "/run/lab/ns"]
