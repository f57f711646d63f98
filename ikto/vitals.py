"""Signs of life of every peer, and the decisions taken from them (with liveness.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ikto import liveness
from ikto.log import fields
from ikto.mesh import Mesh

log = logging.getLogger("ikto.agent")


class Vitals:
    """Owns the liveness policy and what it has told the operator (warnings given once)."""

    def __init__(
        self, policy: liveness.Policy, mesh: Callable[[], Mesh], grace_floor: Callable[[], float | None]
    ) -> None:
        self.policy = policy
        self._mesh = mesh
        self._grace_floor = grace_floor
        self._mass_silence_warned = False

    def silence(self, key: str) -> float | None:
        """Seconds since the peer at `key` last wrote its entry (server clock), None if unknown."""
        mesh = self._mesh()
        return liveness.silence(mesh.written.get(key), mesh.server_now, self._grace_floor())

    def verdict(self, key: str, in_wireguard: bool) -> liveness.Verdict:
        """The state shown for the peer at `key`."""
        expired = key in self._mesh().expired
        silent = self.silence(key)
        return liveness.judge(silent, expired=expired, in_wireguard=in_wireguard, policy=self.policy)

    def expire(self) -> set[str]:
        """Decide which peers are out of WireGuard now; the public keys whose state changed."""
        mesh = self._mesh()
        silent = {k: self.silence(k) for k in mesh.entries if k != mesh.spec.self_key}
        decision = liveness.expire(silent, mesh.expired, self.policy)
        if decision.held_back:
            if not self._mass_silence_warned:
                log.warning("more than half of the peers look silent: not removing any",
                            extra=fields(silent=decision.silent, peers=len(silent)))
                self._mass_silence_warned = True
            return set()
        self._mass_silence_warned = False
        for k in decision.expired - mesh.expired:
            log.warning("peer silent too long; removed from WireGuard, entry kept",
                        extra=fields(node=mesh.entries[k][1].name, key=k, silent_s=round(silent[k] or 0)))
        return mesh.set_expired(set(decision.expired))
