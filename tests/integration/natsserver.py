"""The integration tests' nats-server is ikto_lab's launcher; conftest.py picks the versions.

Kept so that test modules can import NatsServer and free_port from beside them.
"""

from ikto_lab.nats import NatsServer, free_port

__all__ = ["NatsServer", "free_port"]
