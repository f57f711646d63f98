"""The mesh's only control plane: a NATS JetStream key-value bucket (the only package that imports nats).

Every nats-py exception is turned into a typed StoreError with a one-line message a person
can act on. Everything else in ikto sees only Entry values.
"""

from ikto.store.bucket import BUCKET_HISTORY, BUCKET_MAX_CONSUMERS, BucketInfo
from ikto.store.client import BUCKET_MAX_VALUE_SIZE, Store
from ikto.store.errors import (
    BucketNotFoundError,
    ConsumerLimitError,
    KeyExistsError,
    PermissionDeniedError,
    RevisionMismatchError,
    StoreError,
)
from ikto.store.watch import Entry

__all__ = [
    "BUCKET_HISTORY",
    "BUCKET_MAX_CONSUMERS",
    "BUCKET_MAX_VALUE_SIZE",
    "BucketInfo",
    "BucketNotFoundError",
    "ConsumerLimitError",
    "Entry",
    "KeyExistsError",
    "PermissionDeniedError",
    "RevisionMismatchError",
    "Store",
    "StoreError",
]
