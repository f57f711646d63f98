"""The desired WireGuard state, computed as data from the mesh (what the applier and the
rendered file are given)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ikto import ipam
from ikto.config import Config
from ikto.ipam import Network
from ikto.mesh import Mesh
from ikto.models import PeerWant
from ikto.paths import Paths
from ikto.reconcile import want
from ikto.render import render, render_wg


class Desired:
    """Reads the current mesh and config (through getters: both can be replaced) into wants."""

    def __init__(
        self,
        mesh: Callable[[], Mesh],
        config: Callable[[], Config],
        paths: Paths,
        routed_by: Callable[[str], tuple[Network, ...]],
        public_key: str,
        private_key: str,
    ) -> None:
        self._mesh = mesh
        self._paths = paths
        self._routed_by = routed_by
        self._config = config
        self._public_key = public_key
        self._private_key = private_key

    def wanted(self, public_keys: Iterable[str] | None) -> dict[str, PeerWant]:
        """What WireGuard should hold for these public keys (every known one for None).

        The endpoint is the paths' choice: kept as WireGuard learned it while the session
        works, else the candidate being tried. Keys the mesh knows but leaves out (silent too
        long, or a conflict's loser) come with the reason, so a removal can say why.
        """
        mesh, ka = self._mesh(), self._config().persistent_keepalive
        out: dict[str, PeerWant] = {}
        for pk in mesh.public_keys() if public_keys is None else public_keys:
            if pk == self._public_key:
                continue
            if (p := mesh.winner(pk)) is not None:
                endpoint, keep, readd = self._paths.want(p)
                routed = self._routed_by(ipam.peer_key(p.allowed_ip)) if p.routes else ()
                out[pk] = want(p, ka, endpoint, keep_endpoint=keep, readd=readd, routed=routed)
            elif (held := mesh.holder(pk)) is not None:
                key, peer = held
                why = "silent too long (entry kept)" if key in mesh.expired else "lost a public-key conflict"
                out[pk] = PeerWant(peer.name, None, why)
        return out

    def syncconf_text(self) -> str:
        """The whole mesh in wg(8) format."""
        return render_wg(self._config().local_node(), self._private_key, self._mesh().peers())

    def prepare_file(self) -> Callable[[], str]:
        """Take the peers now (on the event loop); the returned function renders the file."""
        node, peers, private_key = self._config().local_node(), self._mesh().peers(), self._private_key
        return lambda: render(node, private_key, peers)
