"""ikto: a WireGuard mesh whose only control plane is a NATS JetStream KV bucket."""

__version__ = "0.4.0"
