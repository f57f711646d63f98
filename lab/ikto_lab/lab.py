"""The network-namespace lab: nodes as netns + private mount ns on a bridge, NATS beside them.

Layout (nothing in the root netns): a hub netns holds the bridge; each NATS server and
each node has its own netns with a veth `eth0` on it, underlay addresses from
198.18.0.0/16 (NATS .1-.3, node N at .10+N). Node agents are real `ikto agent`
processes entered with nsenter into the node's netns and mount ns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ikto.files import write_atomic
from ikto_lab import legacy, mountns, netns, process
from ikto_lab import nat as routers
from ikto_lab.driver import CONFIG_PATH, KEY_PATH, LabDriver, NodeView
from ikto_lab.nats import NatsServer
from ikto_lab.shell import LabError, LabUsageError, env_with_path, interactive, run, spawn
from ikto_lab.state import DEFAULT_NAME, DEFAULT_STATE_DIR, LabState, Layout, NodeState, read_pid, read_tail

UNDERLAY = IPv4Address("198.18.0.0")
UNDERLAY_PREFIX = 16
DEFAULT_MESH = "198.19.0.0/16"  # inside 198.18.0.0/15 too, though it never leaves the lab
DEFAULT_SUBNET_PREFIX = 24
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
RESERVED = {"hub", "nats", "nats1", "nats2", "nats3"}

log = logging.getLogger("ikto_lab")


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def ikto_binary() -> str:
    """The ikto to run in nodes: $IKTO_LAB_IKTO, else the venv's, else the one on PATH."""
    if override := os.environ.get("IKTO_LAB_IKTO"):
        return override
    venv = _bin_dir() / "ikto"
    return str(venv) if venv.exists() else (shutil.which("ikto") or "ikto")


class NamespaceLab(LabDriver):
    """A lab on this host built from network and mount namespaces."""

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        name: str = DEFAULT_NAME,
        mesh_cidr: str = DEFAULT_MESH,
        subnet_prefix: int = DEFAULT_SUBNET_PREFIX,
        *,
        node_config: Mapping[str, Any] | None = None,
        agent_env: Mapping[str, str] | None = None,
        nats_config: str = "",
    ) -> None:
        self.layout = Layout(Path(state_dir))
        # Fault tests shrink the liveness timings of every node (node_config, written into
        # each new node's config file), give agents extra environment (agent_env, e.g. a
        # fake clock), or add to every nats-server's config (nats_config, e.g. users).
        self.node_config = dict(node_config or {})
        self.agent_env = dict(agent_env or {})
        self.nats_config = nats_config
        loaded = self.layout.load()
        self.name = loaded.name if loaded else name
        self._mesh = (mesh_cidr, subnet_prefix)
        self._state = loaded
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # State

    @property
    def state(self) -> LabState:
        if self._state is None:
            raise LabUsageError(f"no lab in {self.layout.root} (start one with `ikto-lab up`)")
        return self._state

    def is_up(self) -> bool:
        return self._state is not None

    def _save(self) -> None:
        self.layout.save(self.state)

    def netns(self, node: str) -> str:
        return f"{self.name}-{node}"

    def nats_servers(self) -> list[NatsServer]:
        st = self.state
        names = ["nats"] if len(st.nats_servers) == 1 else [f"nats{i + 1}" for i in range(3)]
        cluster = tuple(st.nats_servers) if len(st.nats_servers) > 1 else ()
        return [
            NatsServer(
                self.layout.nats_dir(n), addr, name=n, netns=self.netns(n),
                cluster=cluster, cluster_name=self.name, config=self.nats_config,
            )
            for n, addr in zip(names, st.nats_servers, strict=True)
        ]  # fmt: skip

    def nats_url(self) -> str:
        return ",".join(s.url for s in self.nats_servers())

    # Lifecycle

    def up(
        self,
        nodes: int = 3,
        *,
        nats_cluster: bool = False,
        start_agents: bool = True,
        nat: Mapping[str, str] | None = None,
    ) -> None:
        """Create the hub, NATS and `nodes` nodes, and start their agents.

        nat: {node name: "preserve" | "random"} puts those nodes behind their own NAT router.
        """
        nat = dict(nat or {})
        names = [f"node{i + 1}" for i in range(nodes)]
        if unknown := sorted(nat.keys() - set(names)):
            raise LabUsageError(f"NAT for {', '.join(unknown)}: the lab's nodes are node1..node{nodes}")
        with self.layout.locked():
            stale = netns.list_with_prefix(self.name)
            if self.layout.state_file.exists() or stale:
                what = f"{len(stale)} namespaces named {self.name}-*" if stale else "lab.json"
                raise LabUsageError(
                    f"a lab already exists in {self.layout.root} ({what}); "
                    "run `ikto-lab down` first"
                )
            mesh, prefix = self._mesh
            n_nats = 3 if nats_cluster else 1
            self._state = LabState(
                name=self.name,
                nats_cluster=nats_cluster,
                mesh_cidr=mesh,
                subnet_prefix=prefix,
                nats_servers=[str(UNDERLAY + 1 + i) for i in range(n_nats)],
            )
            self.layout.root.mkdir(parents=True, exist_ok=True)
            self._save()  # first, so `down` can find everything after a crash
            try:
                log.info("creating the underlay (bridge in netns %s)", self.netns("hub"))
                mountns.make_private_dir(self.layout.ns_dir)
                hub = self.netns("hub")
                netns.add(hub)
                netns.add_bridge(hub)
                for i, s in enumerate(self.nats_servers()):
                    ns = self.netns(s.name)
                    netns.add(ns)
                    netns.plug(hub, f"vs{i + 1}", ns, f"{s.address}/{UNDERLAY_PREFIX}")
                log.info("starting nats-server at %s", self.nats_url())
                self._start_nats_servers()
                for n in names:
                    self._create_node(n, init=start_agents, nat=nat.get(n))
            except BaseException:
                self._teardown()  # roll back a half-built lab, as wg-quick does
                raise
        if start_agents:
            # A failing agent leaves the lab up, so its log can be read.
            log.info("starting the agents")
            self.start_agents(self.nodes())

    def down(self) -> None:
        """Remove everything the lab made, even after a crash; idempotent."""
        with self.layout.locked():
            self._teardown()

    def _teardown(self) -> None:
        root = self.layout.root
        pids = [read_pid(p) for p in root.glob("nodes/*/agent.pid")]
        pids += [read_pid(p) for p in root.glob("nats/*/nats.pid")]
        spaces = netns.list_with_prefix(self.name)
        for ns in spaces:
            pids += netns.pids(ns)
        process.terminate({p for p in pids if p is not None}, grace=3.0)
        for p in self._procs.values():
            p.poll()
        self._procs.clear()
        for ns in spaces:
            netns.delete(ns)
        mountns.unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)
        self._state = None

    # Nodes

    def nodes(self) -> list[str]:
        return list(self.state.nodes)

    def members(self) -> list[str]:
        # A copy first: tests read this from threads while nodes are added.
        return [n for n, s in list(self.state.nodes.items()) if s.member]

    def _node(self, node: str) -> NodeState:
        try:
            return self.state.nodes[node]
        except KeyError:
            known = ", ".join(self.state.nodes) or "none"
            raise LabUsageError(f"no node {node!r} in the lab (nodes: {known})") from None

    def underlay(self, node: str) -> str:
        return self._node(node).underlay

    # NAT routers (ikto_lab.nat)

    def router(self, node: str) -> routers.Router | None:
        """The NAT router in front of node, None if node is on the underlay itself."""
        st = self._node(node)
        if st.nat is None:
            return None
        return routers.Router(self.name, node, st.index, st.nat, st.wan_generation)

    def public_address(self, node: str) -> str:
        """Where the underlay sees node's packets come from: its router's WAN address, or its own."""
        r = self.router(node)
        return r.wan if r else self.underlay(node)

    def restart_router(self, node: str, *, new_wan: bool = False) -> str:
        """Restart node's NAT router: every flow forgotten, and with new_wan a new public
        address (its ISP gave it another one). The router's WAN address after it."""
        r = self.router(node)
        if r is None:
            raise LabUsageError(f"{node} is not behind a NAT router")
        with self.layout.locked():
            after = routers.restart(r, new_wan=new_wan)
            self._node(node).wan_generation = after.generation
            self._save()
        log.info("restarted the NAT router of %s (WAN %s)", node, after.wan)
        return after.wan

    def endpoint_ok(self, node: str, endpoint: str | None, view: NodeView) -> bool:
        # A NATed node is reached wherever its router maps it (a port of the router's WAN
        # address); its advertised LAN address is what peers hold until they learn that.
        r = self.router(node)
        if r is None:
            return super().endpoint_ok(node, endpoint, view)
        host = endpoint.rpartition(":")[0] if endpoint else None
        return host in (r.wan, r.address)

    def add_node(
        self, name: str, *, private_address: str | None = None, start: bool = True, nat: str | None = None
    ) -> str:
        """Create node `name` with a fresh config and (by default) start its agent; nat: behind
        its own NAT router ("preserve" or "random")."""
        with self.layout.locked():
            try:
                self._create_node(name, init=True, nat=nat)
                if private_address is not None:
                    self.set_config(name, private_address=private_address)
            except LabUsageError:
                raise
            except BaseException:
                self._remove_node(name)
                raise
        if start:
            self.start_agent(name)
        return name

    def add_v03_node(self, name: str) -> str:
        """A node with no agent, set up as ikto v0.3 sets itself up (ikto_lab.legacy): its entry
        written once in v0.3's format, the bucket's peers in WireGuard, no keepalive."""
        self.add_node(name, start=False)
        legacy.bring_up(self, name)
        st = self._node(name)
        st.v03 = st.member = True
        self._save()
        return name

    def sync_v03_node(self, name: str) -> int:
        """Give a v0.3 node the bucket's current peers, as its watch would; how many it has."""
        if not self._node(name).v03:
            raise LabUsageError(f"{name} is not a v0.3 node")
        return legacy.sync_peers(self, name)

    def remove_node(self, name: str) -> None:
        """Remove a node completely (its agent, router, namespaces, state); its entry stays in the bucket."""
        self._node(name)
        with self.layout.locked():
            self._remove_node(name)

    def _remove_node(self, name: str) -> None:
        """Undo a node completely: its processes, netns, mount ns and directory."""
        ns = self.netns(name)
        process.terminate(netns.pids(ns))
        netns.delete(ns)
        netns.delete(routers.router_netns(self.name, name))
        mountns.unmount_all(self.layout.mntns(name))
        self.layout.mntns(name).unlink(missing_ok=True)
        shutil.rmtree(self.layout.node_dir(name), ignore_errors=True)
        self._procs.pop(name, None)
        if self.state.nodes.pop(name, None) is not None:
            self._save()

    def _create_node(self, name: str, *, init: bool, nat: str | None = None) -> None:
        if not NODE_NAME_RE.match(name) or name in RESERVED:
            raise LabUsageError(
                f"bad node name {name!r}: use 1-31 lowercase letters, digits and '-', "
                f"starting with a letter, not one of {', '.join(sorted(RESERVED))}"
            )
        st = self.state
        if name in st.nodes or netns.exists(self.netns(name)):
            raise LabUsageError(f"node {name!r} already exists")
        index = 1 + max((n.index for n in st.nodes.values()), default=0)
        router = routers.Router(self.name, name, index, nat) if nat else None
        underlay = router.address if router else str(UNDERLAY + 10 + index)
        node = NodeState(name=name, index=index, underlay=underlay, nat=nat)
        st.nodes[name] = node
        self._save()
        ns = self.netns(name)
        netns.add(ns)
        if router is not None:
            log.info("creating %s (%s, behind a %s NAT router at %s)", name, underlay, nat, router.wan)
            routers.build(router)
        else:
            log.info("creating %s (underlay %s)", name, node.underlay)
            netns.plug(self.netns("hub"), f"vn{index}", ns, f"{node.underlay}/{UNDERLAY_PREFIX}")
        node_dir = self.layout.node_dir(name)
        mountns.create(
            self.layout.mntns(name), netns.netns_path(ns), node_dir, self.layout.ns_dir
        )
        if init:
            # Behind NAT, `ikto init` picks the advertise address itself, as on a home host:
            # its LAN address (from the default route through the router).
            advertise = [] if router else ["--advertise-address", node.underlay]
            self.exec(
                name,
                [
                    ikto_binary(), "init",
                    "-m", st.mesh_cidr, "-p", str(st.subnet_prefix),
                    "--private-key-path", KEY_PATH,
                    "--name", name,
                    *advertise,
                    "--nats-url", self.nats_url(),
                    "-o", CONFIG_PATH,
                ],
                check=True,
            )  # fmt: skip
            if self.node_config:
                self.set_config(name, **self.node_config)

    def config_file(self, node: str) -> Path:
        """The node's /etc/ikto/ikto.json as seen from the host."""
        self._node(node)
        return self.layout.node_dir(node) / "etc-ikto" / Path(CONFIG_PATH).name

    def config(self, node: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_file(node).read_text())
        return data

    def set_config(self, node: str, **fields: Any) -> None:
        """Change fields of the node's config file (takes effect at the next agent start)."""
        data = self.config(node)
        data.update(fields)
        write_atomic(self.config_file(node), json.dumps(data, indent=2) + "\n")

    def node_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv wrapped to run inside node's network and mount namespaces."""
        self._node(node)
        return [
            "nsenter",
            f"--mount={self.layout.mntns(node)}",
            f"--net={netns.netns_path(self.netns(node))}",
            "--",
            *argv,
        ]

    def exec(
        self, node: str, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return run(
            self.node_argv(node, argv),
            check=check,
            timeout=timeout,
            env=env_with_path(str(_bin_dir())),
        )

    def exec_interactive(self, node: str, argv: Sequence[str]) -> int:
        """Run argv in node attached to this terminal; its exit code."""
        return interactive(self.node_argv(node, argv), env=env_with_path(str(_bin_dir())))

    # Agents

    def agent_pid(self, node: str) -> int | None:
        return read_pid(self.layout.agent_pidfile(node))

    def agent_running(self, node: str) -> bool:
        proc = self._procs.get(node)
        if proc is not None:
            proc.poll()  # reap it, or a dead agent would look alive as a zombie
        pid = self.agent_pid(node)
        return pid is not None and process.alive(pid)

    def start_agent(
        self, node: str, timeout: float = 30.0, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start node's agent (env: extra environment) and wait until it answers on its admin socket."""
        self._spawn_agent(node, env)
        self._wait_agent_ready(node, timeout)

    def _spawn_agent(self, node: str, extra_env: Mapping[str, str] | None = None) -> None:
        if self.agent_running(node):
            raise LabUsageError(f"the agent on {node} is already running")
        sock = self._admin_socket(node)
        sock.unlink(missing_ok=True)  # a SIGKILLed agent leaves its socket behind
        log_path = self.layout.agent_log(node)
        with open(log_path, "a") as f:
            f.write(f"--- lab: starting agent {time.strftime('%H:%M:%S')}\n")
        proc = spawn(
            self.node_argv(node, [ikto_binary(), "agent", "-c", CONFIG_PATH]),
            log_path,
            env={**env_with_path(str(_bin_dir())), **self.agent_env, **(extra_env or {})},
        )
        # nsenter execs the agent (no --fork), so this pid is the agent's.
        self.layout.agent_pidfile(node).write_text(f"{proc.pid}\n")
        self._procs[node] = proc
        st = self._node(node)
        if not st.member:
            st.member, st.left = True, False
            self._save()

    def _admin_socket(self, node: str) -> Path:
        return self.layout.node_dir(node) / "run-ikto" / "ikto.sock"

    def _wait_agent_ready(self, node: str, timeout: float = 30.0) -> None:
        # A unix socket is reachable by path from any network namespace; the host sees
        # the node's /run/ikto through the bind mount's source directory.
        deadline = time.monotonic() + timeout
        path = str(self._admin_socket(node))
        while True:
            if not self.agent_running(node):
                raise LabError(
                    f"the agent on {node} exited at start (the lab stays up: "
                    f"`ikto-lab logs {node}`, then `ikto-lab down`):\n{self.log_tail(node)}"
                )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise LabError(
                    f"the agent on {node} did not open its admin socket in {timeout:g} s:\n"
                    + self.log_tail(node)
                )
            time.sleep(0.1)

    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        pid = self.agent_pid(node)
        if pid is None or not self.agent_running(node):
            raise LabUsageError(f"the agent on {node} is not running")
        process.signal_pids([pid], sig)
        proc = self._procs.pop(node, None)
        if proc is not None:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                process.signal_pids([pid], signal.SIGKILL)  # the next test gets a node that works
                proc.wait(5)
                raise LabError(
                    f"the agent on {node} ignored signal {sig} for {timeout:g} s (killed):\n"
                    + self.log_tail(node, 60)
                ) from None
            this_run = self.log_tail(node, 200).rsplit("--- lab: starting agent", 1)[-1]
            if "most recent call first" in this_run:
                # `ikto agent` exits 1 with every thread's stack when its process outlives a
                # stop (cli.STOP_WITHIN): not a test failure, but worth a look.
                warnings.warn(f"the agent on {node} hung after it stopped:\n{this_run}", stacklevel=2)
            return code
        if process.wait_gone([pid], timeout):
            raise LabError(f"the agent on {node} ignored signal {sig} for {timeout:g} s")
        return None

    def leave_node(self, node: str, *, down: bool = False, timeout: float = 15.0) -> int | None:
        argv = [ikto_binary(), "leave"] + (["--down"] if down else [])
        self.exec(node, argv, check=True, timeout=timeout)
        pid = self.agent_pid(node)
        proc = self._procs.pop(node, None)
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise LabError(f"the agent on {node} did not exit {timeout:g} s after leave") from None
        elif pid is not None and process.wait_gone([pid], timeout):
            raise LabError(f"the agent on {node} did not exit {timeout:g} s after leave")
        st = self._node(node)
        st.member, st.left = False, True
        self._save()
        return code

    def log_tail(self, node: str, lines: int = 30) -> str:
        """The last lines of node's agent log."""
        tail = read_tail(self.layout.agent_log(node), lines)
        return "(no agent log)" if tail is None else "\n".join(tail)

    # NATS

    def _start_nats_servers(self, timeout: float = 30.0) -> None:
        # All at once: a cluster member is healthy only once it has met the others.
        servers = self.nats_servers()
        for s in servers:
            s.start(wait=False)
        for s in servers:
            s.wait_healthy(timeout)

    def stop_nats(self) -> None:
        for s in self.nats_servers():
            s.stop()

    def start_nats(self, timeout: float = 30.0) -> None:
        self._start_nats_servers(timeout)

    # Status

    def status(self) -> dict[str, Any]:
        """A snapshot for `ikto-lab status`: NATS health and each node's agent and peers."""
        nodes = []
        for n, s in self.state.nodes.items():
            view = self.observe(n)
            r = self.router(n)
            agent = "running" if self.agent_running(n) else "stopped"
            nodes.append(
                {
                    "name": n,
                    "underlay": s.underlay,
                    "nat": s.nat,
                    "router_netns": r.netns if r else None,
                    "public_address": self.public_address(n),
                    "member": s.member,
                    "left": s.left,
                    "agent": "v0.3 (none)" if s.v03 else agent,
                    "pid": self.agent_pid(n),
                    "mesh_address": str(view.address) if view.address else None,
                    "peers": len(view.device.peers) if view.device else None,
                }
            )
        nats = [
            {"name": s.name, "url": s.url, "healthy": s.healthy()} for s in self.nats_servers()
        ]
        return {"state_dir": str(self.layout.root), "nats": nats, "nodes": nodes}

    # One NATS server, and an operator's view of the bucket

    def nats_server(self, name: str) -> NatsServer:
        for s in self.nats_servers():
            if s.name == name:
                return s
        raise LabUsageError(f"no nats-server {name!r} (servers: {[s.name for s in self.nats_servers()]})")

    def start_nats_server(self, name: str, timeout: float = 30.0) -> None:
        """Start one nats-server again (same config and store) and wait until it is healthy."""
        self.nats_server(name).start(timeout=timeout)

    def _admin_netns(self) -> str:
        """A netns on the underlay for an operator's tools (created on first use)."""
        ns = self.netns("admin")
        if not netns.exists(ns):
            netns.add(ns)
            netns.plug(self.netns("hub"), "vadm", ns, f"{UNDERLAY + 9}/{UNDERLAY_PREFIX}")
        return ns

    def admin(
        self, *args: str, url: str | None = None, bucket: str = "ikto-mesh", timeout: float = 120.0
    ) -> Any:
        """Run `python -m ikto_lab.admin ARGS` against the lab's NATS as an operator; its JSON."""
        replicas = "3" if len(self.nats_servers()) > 1 else "1"
        argv = [
            "ip", "netns", "exec", self._admin_netns(), sys.executable, "-m", "ikto_lab.admin",
            "--url", url or self.nats_url(), "--bucket", bucket, "--replicas", replicas, *args,
        ]  # fmt: skip
        cp = run(argv, check=False, timeout=timeout)
        if cp.returncode != 0:
            raise LabError(f"lab admin {' '.join(args)} failed: {(cp.stderr or cp.stdout).strip()[-800:]}")
        return json.loads(cp.stdout)

    # Agents started without waiting (several at once), and what they report

    def spawn_agent(self, node: str, *, env: Mapping[str, str] | None = None) -> None:
        """Start node's agent without waiting for it (several at once, or one expected to fail)."""
        self._spawn_agent(node, env)

    def wait_agent_ready(self, node: str, timeout: float = 30.0) -> None:
        self._wait_agent_ready(node, timeout)

    def start_agents(self, nodes: Iterable[str]) -> None:
        """Start these nodes' agents all at once, then wait until each is ready."""
        nodes = list(nodes)
        for n in nodes:
            self._spawn_agent(n)
        for n in nodes:
            self._wait_agent_ready(n)

    def wait_agent_exit(self, node: str, timeout: float = 30.0) -> int | None:
        """Wait for node's agent to exit by itself; its exit code (LabError if it keeps running)."""
        proc = self._procs.pop(node, None)
        if proc is not None:
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._procs[node] = proc
                raise LabError(f"the agent on {node} still runs after {timeout:g} s") from None
        pid = self.agent_pid(node)
        if pid is not None and process.wait_gone([pid], timeout):
            raise LabError(f"the agent on {node} still runs after {timeout:g} s")
        return None

