"""Node configuration: the v0.3 JSON file, IKTO_* variables and CLI flags, validated once.

Precedence, highest first: CLI flags > IKTO_* environment variables > the JSON file >
defaults. Every invalid field is reported on its own line, naming the field.
"""

from __future__ import annotations

import json
import re
import socket
from contextvars import ContextVar
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ikto import ipam, keys
from ikto.errors import UsageError
from ikto.files import write_atomic
from ikto.ipam import Address, Interface, Network, unusable_endpoint_reason
from ikto.models import LocalNode
from ikto.routes import own_problems

DEFAULT_MESH = "fd10::/16"
DEFAULT_PREFIX = 48
DEFAULT_SOCKET = Path("/run/ikto/ikto.sock")
SOCKET_DIR = DEFAULT_SOCKET.parent
DEFAULT_DEV = "wg-ikto"
IFNAME_RE = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")
BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_json_path: ContextVar[Path | None] = ContextVar("ikto_config_path", default=None)


class ConfigError(UsageError):
    """The configuration is invalid; the message has one line per bad field."""


class _JsonFileSource(PydanticBaseSettingsSource):
    """Reads the v0.3 JSON config file named by load_config()."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole file

    def __call__(self) -> dict[str, Any]:
        path = _json_path.get()
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist (create one with: ikto init -o {path})"
            ) from None
        except PermissionError:
            raise ConfigError(f"config file {path}: permission denied") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        # v0.3 wrote "" for unset optional paths.
        return {k: v for k, v in data.items() if v != ""}


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "ikto-node"


class Config(BaseSettings):
    """One node's configuration. Field names are ikto v0.3's JSON names."""

    model_config = SettingsConfigDict(
        env_prefix="IKTO_", extra="forbid", frozen=True, validate_default=True
    )

    name: str = Field(default_factory=_hostname, description="node name shown to peers")
    advertise_address: Address | None = Field(
        default=None, description="underlay address peers send WireGuard packets to"
    )
    private_address: Address | None = Field(
        default=None, description="base of this node's subnet of the mesh"
    )
    subnet_prefix: int = Field(default=DEFAULT_PREFIX, description="prefix length of each node's subnet")
    mesh_cidr: Network = Field(default=ip_network(DEFAULT_MESH), description="the whole mesh")
    wg_dev_name: str = Field(default=DEFAULT_DEV, description="WireGuard interface name")
    wg_port: int = Field(default=51820, description="WireGuard UDP listen port")
    private_key_path: Path | None = Field(default=None, description="WireGuard private key file (0600)")
    nats_creds: Path | None = Field(default=None, description="NATS credentials file (JWT + nkey)")
    nats_url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated"
    )
    nats_kv: str = Field(default="ikto-mesh", description="JetStream key-value bucket")
    # Beyond v0.3:
    nats_tls_ca: Path | None = Field(default=None, description="CA bundle to verify NATS servers")
    nats_tls_cert: Path | None = Field(default=None, description="client certificate for NATS mTLS")
    nats_tls_key: Path | None = Field(default=None, description="client key for NATS mTLS")
    create_bucket: bool = Field(default=True, description="create the bucket if it does not exist")
    routes: list[Network] = Field(
        default_factory=list, description="networks this node routes for the mesh (a LAN behind it)"
    )
    exit_node: bool = Field(default=False, description="may announce a default route (0.0.0.0/0, ::/0)")
    address_pinned: bool = Field(
        default=False, description="never move to another address if ours is taken"
    )
    persistent_keepalive: int = Field(default=25, description="seconds; 0 turns keepalives off")
    mtu: int | None = Field(default=None, description="interface MTU; unset lets wg-quick choose")
    admin_socket: Path | None = Field(
        default=None,
        description="admin API unix socket "
        "[default: /run/ikto/ikto.sock for wg-ikto, else /run/ikto/<wg_dev_name>.sock]",
    )
    config_dir: Path = Field(default=Path("/etc/wireguard"), description="where <dev>.conf is written")
    log_level: str = Field(default="info", description="debug, info, warning or error")
    rotate_key_days: float | None = Field(
        default=None, description="replace the WireGuard key when it is this many days old; off if unset"
    )
    metrics_address: str | None = Field(
        default=None, description="host:port to serve /metrics over TCP (e.g. 127.0.0.1:9586); off if unset"
    )
    metrics_per_peer: bool | None = Field(
        default=None,
        description="WireGuard series for every peer (4 each); unset: while there are at most 1,000 peers",
    )
    # Liveness (seconds, on the NATS server's clock): see README "Failure behaviour".
    heartbeat_interval: float = Field(
        default=10.0, description="how often liveness is reviewed (and presence written when a peer needs it)"
    )
    stale_after: float = Field(
        default=30.0, description="a peer silent this long past its usual rhythm is shown stale"
    )
    remove_after: float = Field(
        default=600.0, description="a peer silent this long is taken out of WireGuard (entry kept)"
    )
    reclaim_after: float = Field(
        default=3600.0, description="a node silent this long loses its address to a new claimant"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _JsonFileSource(settings_cls))

    @field_validator("mesh_cidr", mode="before")
    @classmethod
    def _mesh(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return ip_network(v, strict=True)
            except ValueError as e:
                raise ValueError(f"not a network in CIDR form ({e})") from None
        return v

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, v: Any) -> Any:
        if isinstance(v, list):
            out = []
            for r in v:
                try:
                    out.append(ip_network(r, strict=True) if isinstance(r, str) else r)
                except ValueError as e:
                    raise ValueError(f"{r!r} is not a network in CIDR form ({e})") from None
            return out
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 64 or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must be 1-64 printable characters")
        return v

    @field_validator("wg_dev_name")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not IFNAME_RE.match(v):
            raise ValueError("must be 1-15 characters of letters, digits and _=+.-")
        return v

    @field_validator("wg_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"must be 1-65535 (got {v})")
        return v

    @field_validator("nats_kv")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET_RE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, _ and -")
        return v

    @field_validator("nats_url")
    @classmethod
    def _urls(cls, v: str) -> str:
        urls = [u.strip() for u in v.split(",") if u.strip()]
        if not urls:
            raise ValueError("at least one URL is needed, e.g. nats://10.0.0.1:4222")
        for u in urls:
            if "://" not in u:
                raise ValueError(f"{u!r} is not a URL (expected nats://host:port or tls://host:port)")
        return ",".join(urls)

    @field_validator("persistent_keepalive")
    @classmethod
    def _keepalive(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError(f"must be 0-65535 seconds (got {v})")
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int | None) -> int | None:
        if v is not None and not 1280 <= v <= 9000:
            raise ValueError(f"must be 1280-9000 (got {v})")
        return v

    @field_validator("rotate_key_days")
    @classmethod
    def _rotate(cls, v: float | None) -> float | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1 day (got {v})")
        return v

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
            raise ValueError(f"{v!r} is not host:port (e.g. 127.0.0.1:9586, or [::]:9586)")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return v

    @field_validator("advertise_address")
    @classmethod
    def _advertise(cls, v: Address | None) -> Address | None:
        if v is None:
            return v
        reason = unusable_endpoint_reason(v)
        if reason:
            raise ValueError(f"{v} is {reason}; give this host's underlay address")
        return v

    @model_validator(mode="after")
    def _socket(self) -> Config:
        # Each mesh on a host has its own interface, so its own socket by default: several
        # agents (ikto-agent@<mesh>.service) never collide unless told to.
        if self.admin_socket is None:
            own = SOCKET_DIR / f"{self.wg_dev_name}.sock"
            sock = DEFAULT_SOCKET if self.wg_dev_name == DEFAULT_DEV else own
            object.__setattr__(self, "admin_socket", sock)
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        # Errors here name their field themselves: pydantic gives them no location.
        mesh = self.mesh_cidr
        try:
            ipam.check_subnet_prefix(mesh, self.subnet_prefix)
        except ValueError as e:
            raise ValueError(f"subnet_prefix: {e}") from None
        if self.private_address is not None:
            try:
                ipam.node_subnet(mesh, self.private_address, self.subnet_prefix)
            except ValueError as e:
                raise ValueError(f"private_address: {e}") from None
        if not 1 <= self.heartbeat_interval <= self.stale_after / 2:
            raise ValueError("heartbeat_interval: must be at least 1 s and at most half of stale_after")
        if not self.stale_after <= self.remove_after <= self.reclaim_after:
            raise ValueError("stale_after <= remove_after <= reclaim_after must hold")
        if self.private_key_path is not None:
            try:
                keys.check_key_file_mode(self.private_key_path)
            except UsageError as e:
                raise ValueError(f"private_key_path: {e}") from None
        bad_routes = own_problems(self.routes, mesh, self.exit_node)
        if bad_routes:
            raise ValueError("routes: " + "; ".join(bad_routes))
        if self.advertise_address is not None and self.advertise_address in mesh:
            raise ValueError(
                f"advertise_address: {self.advertise_address} is inside the mesh {mesh}; "
                "it must be an underlay address"
            )
        return self

    # Derived values

    @property
    def subnet(self) -> Network:
        """This node's subnet (its AllowedIPs on every peer)."""
        assert self.private_address is not None
        return ipam.node_subnet(self.mesh_cidr, self.private_address, self.subnet_prefix)

    @property
    def interface_address(self) -> Interface:
        """The interface address: private address with the mesh prefix length."""
        return ipam.interface_address(self.mesh_cidr, self.subnet)

    @property
    def nats_servers(self) -> list[str]:
        return self.nats_url.split(",")

    @property
    def bucket_replicas(self) -> int:
        """Replicas for a bucket we create: 3 when given a cluster (3+ URLs), else 1."""
        return 3 if len(self.nats_servers) >= 3 else 1

    def local_node(self) -> LocalNode:
        """What the rendered WireGuard file says about this node."""
        return LocalNode(
            self.name, self.wg_dev_name, self.mesh_cidr, self.nats_kv, self.interface_address,
            self.wg_port, self.mtu, self.persistent_keepalive,
        )

    @property
    def socket(self) -> Path:
        """The admin socket (admin_socket, or the default for our interface)."""
        assert self.admin_socket is not None  # set by the _socket validator
        return self.admin_socket

    @property
    def wg_config_path(self) -> Path:
        return self.config_dir / f"{self.wg_dev_name}.conf"

    def to_json_dict(self) -> dict[str, Any]:
        """The config as the JSON file stores it (v0.3 names first, unset optionals omitted)."""
        out: dict[str, Any] = {}
        for k, v in self.model_dump(mode="json").items():
            if v is None:
                continue
            out[k] = v
        return out

    def require_agent_fields(self) -> None:
        """Fields the agent cannot run without (init fills them all)."""
        missing = [
            f"{f}: required to run the agent"
            for f in ("advertise_address", "private_address", "private_key_path")
            if getattr(self, f) is None
        ]
        if missing:
            raise ConfigError("\n".join(missing))


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if err["type"] == "extra_forbidden":
            msg = "unknown field (the known fields are listed in the README)"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Load and validate a config; raise ConfigError with one line per invalid field."""
    token = _json_path.set(path)
    try:
        return Config(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None
    finally:
        _json_path.reset(token)


def write_config(config: Config, path: Path) -> None:
    """Write the config as JSON atomically (temp file + rename), mode 0600."""
    write_atomic(path, json.dumps(config.to_json_dict(), indent=2) + "\n")
