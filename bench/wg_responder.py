#!/usr/bin/env python3
"""A WireGuard responder for many simulated nodes: answers handshakes, keeps sessions alive.

P6's simulated nodes have no WireGuard of their own. Without one, a real agent sees thousands
of peers that never handshake and reads their presence records at its probe budget
(docs/liveness.md, "Reading evidence only when a decision needs it"): that is a mesh whose data
plane is broken, not the steady state of a healthy one. This process holds every simulated
node's private key on a UDP port of its own, answers handshake initiations (Noise_IKpsk2 as in
the WireGuard paper, section 5.4, no pre-shared key) and sends a keepalive on each session every
KEEPALIVE seconds, as a node with persistent_keepalive 25 does. It never decrypts data.

    python bench/wg_responder.py KEYS.json    # {"address": ip, "nodes": [[port, private_b64], ...]}

Prints `{"ready": n}` once it listens; on stdin, `stats` prints its counters as one JSON line.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import os
import random
import resource
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
KEEPALIVE = 20.0  # seconds between our keepalives on a session (the agents expect one per 25 s)
REJECT_AFTER = 180.0  # a session older than this is dead (WireGuard's REJECT_AFTER_TIME)
ZERO_NONCE = bytes(12)
RAW = serialization.Encoding.Raw


def blake(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    t0 = hmac.new(key, data, hashlib.blake2s).digest()
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(t0, prev + bytes([i]), hashlib.blake2s).digest()
        out.append(prev)
    return out


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def dh(priv: X25519PrivateKey, pub: bytes) -> bytes:
    return priv.exchange(X25519PublicKey.from_public_bytes(pub))


def public_bytes(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


C0 = blake(CONSTRUCTION)
H0 = blake(C0, IDENTIFIER)


@dataclass
class Node:
    """One simulated node: its static key, and what every initiation to it starts from."""

    port: int
    private: X25519PrivateKey
    public: bytes
    h: bytes  # HASH(H0 || our public key)
    mac1_key: bytes


@dataclass
class Session:
    port: int
    theirs: int  # the initiator's index: what our packets carry
    send: ChaCha20Poly1305
    addr: tuple[str, int]
    created: float
    counter: int = 0
    confirmed: bool = False  # they sent data on it: we may too
    next_keepalive: float = 0.0


def node(port: int, private_b64: str) -> Node:
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    pub = public_bytes(priv)
    return Node(port, priv, pub, blake(H0, pub), blake(LABEL_MAC1, pub))


def respond(n: Node, msg: bytes, ours: int) -> tuple[bytes, bytes, int, bytes] | None:
    """(response, their static key, their index, our sending key) for a handshake initiation,
    None if it is not one for this node."""
    if len(msg) != 148 or msg[:4] != b"\x01\x00\x00\x00" or mac(n.mac1_key, msg[:116]) != msg[116:132]:
        return None
    theirs = struct.unpack_from("<I", msg, 4)[0]
    e_i, enc_static, enc_ts = msg[8:40], msg[40:88], msg[88:116]
    (c,) = kdf(1, C0, e_i)
    h = blake(n.h, e_i)
    c, k = kdf(2, c, dh(n.private, e_i))
    s_i = ChaCha20Poly1305(k).decrypt(ZERO_NONCE, enc_static, h)
    h = blake(h, enc_static)
    c, k = kdf(2, c, dh(n.private, s_i))
    ChaCha20Poly1305(k).decrypt(ZERO_NONCE, enc_ts, h)  # a TAI64N timestamp; replays not checked
    h = blake(h, enc_ts)
    e_r = X25519PrivateKey.generate()
    e_r_pub = public_bytes(e_r)
    out = b"\x02\x00\x00\x00" + struct.pack("<II", ours, theirs) + e_r_pub
    (c,) = kdf(1, c, e_r_pub)
    h = blake(h, e_r_pub)
    (c,) = kdf(1, c, dh(e_r, e_i))
    (c,) = kdf(1, c, dh(e_r, s_i))
    c, t, k = kdf(3, c, bytes(32))  # no pre-shared key
    h = blake(h, t)
    empty = ChaCha20Poly1305(k).encrypt(ZERO_NONCE, b"", h)
    out += empty
    out += mac(blake(LABEL_MAC1, s_i), out) + bytes(16)
    _recv, send = kdf(2, c, b"")  # responder: (T_recv, T_send)
    return out, s_i, theirs, send


def keepalive(s: Session) -> bytes:
    nonce = b"\x00\x00\x00\x00" + struct.pack("<Q", s.counter)
    pkt = b"\x04\x00\x00\x00" + struct.pack("<IQ", s.theirs, s.counter) + s.send.encrypt(nonce, b"", None)
    s.counter += 1
    return pkt


class Responder:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.port: n for n in nodes}
        self.sessions: dict[int, Session] = {}
        self.current: dict[tuple[int, bytes], int] = {}  # (port, their static key) -> our index
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self.pending: dict[tuple[int, tuple[str, int]], bytes] = {}  # the latest initiation each
        self.wake = asyncio.Event()
        self.stats = {"handshakes": 0, "keepalives": 0, "cookie_replies": 0, "rejected": 0, "data_in": 0}

    def received(self, port: int, data: bytes, addr: tuple[str, int]) -> None:
        kind = data[0] if data else 0
        if kind == 1:
            self.pending[(port, addr)] = data  # a retry replaces an unanswered one
            self.wake.set()
        elif kind == 4 and len(data) >= 32:
            self.stats["data_in"] += 1
            s = self.sessions.get(struct.unpack_from("<I", data, 4)[0])
            if s is not None and not s.confirmed:
                s.confirmed, s.addr = True, addr
                s.next_keepalive = time.monotonic()
        elif kind == 3:
            self.stats["cookie_replies"] += 1  # the agent is under load and wants a cookie: we have none

    async def handshakes(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                (port, addr), msg = self.pending.popitem()
                ours = random.getrandbits(32)
                got = respond(self.nodes[port], msg, ours)
                if got is None:
                    self.stats["rejected"] += 1
                    continue
                out, s_i, theirs, send = got
                old = self.current.pop((port, s_i), None)
                if old is not None:
                    self.sessions.pop(old, None)
                self.current[(port, s_i)] = ours
                self.sessions[ours] = Session(port, theirs, ChaCha20Poly1305(send), addr, time.monotonic())
                self.transports[port].sendto(out, addr)
                self.stats["handshakes"] += 1
                if self.stats["handshakes"] % 50 == 0:
                    await asyncio.sleep(0)  # let the keepalives and the socket readers run

    async def keepalives(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for ours, s in list(self.sessions.items()):
                if now - s.created > REJECT_AFTER:
                    del self.sessions[ours]
                elif s.confirmed and s.next_keepalive <= now:
                    self.transports[s.port].sendto(keepalive(s), s.addr)
                    s.next_keepalive = now + KEEPALIVE * random.uniform(0.9, 1.0)
                    self.stats["keepalives"] += 1


class _Port(asyncio.DatagramProtocol):
    def __init__(self, r: Responder, port: int) -> None:
        self.r, self.port = r, port

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.r.received(self.port, data, addr)


async def serve(spec: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, len(spec["nodes"]) + 256)), hard))
    r = Responder([node(port, key) for port, key in spec["nodes"]])
    loop = asyncio.get_running_loop()
    for port in r.nodes:
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_Port, r, port), local_addr=(spec["address"], port)
        )
        r.transports[port] = transport
    tasks = [asyncio.create_task(r.handshakes()), asyncio.create_task(r.keepalives())]
    print(json.dumps({"ready": len(r.nodes)}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            live = sum(1 for s in r.sessions.values() if s.confirmed)
            print(json.dumps({**r.stats, "sessions": live, "cpu_s": time.process_time()}), flush=True)
    for t in tasks:
        t.cancel()


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.nice(0)
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
