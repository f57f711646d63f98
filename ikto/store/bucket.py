"""The bucket's stream: how the agent creates it, and what `ikto bucket` shows and changes.

Every agent's watch is one consumer on the stream. nats-py creates KV streams with
`max_consumers: -1`, which nats-server 2.11+ turns into its default cap of 1,000 consumers
(2.9 leaves it unlimited), so the 1,001st node of a mesh could not watch (docs/nats-scale.md).
We create the stream ourselves, exactly as nats-py would for a KV bucket, with an explicit
limit and direct gets allowed (cheaper reads, docs/nats-scale.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

BUCKET_HISTORY = 5
# Room for 10,000 nodes ten times over (a watch costs the server about 0.1 MiB while it lives;
# the limit itself costs nothing). `ikto bucket --max-consumers` changes it on 2.12.5+.
BUCKET_MAX_CONSUMERS = 100_000
DUPLICATE_WINDOW = 120.0  # seconds, as nats-py sets for a KV bucket


def stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_stream_config(bucket: str, *, replicas: int, max_value_size: int, max_consumers: int) -> StreamConfig:
    """The stream of a KV bucket as nats-py's create_key_value builds it, but with our limits."""
    return StreamConfig(
        name=stream_name(bucket),
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW,
        max_consumers=max_consumers,
        max_msg_size=max_value_size,
        max_msgs=-1,
        max_msgs_per_subject=BUCKET_HISTORY,
        num_replicas=replicas,
        storage=StorageType.FILE,
    )


@dataclass(frozen=True, slots=True)
class BucketInfo:
    """What `ikto bucket` shows."""

    bucket: str
    stream: str
    replicas: int
    history: int
    max_value_size: int
    max_consumers: int  # -1: the server's default (1,000 on 2.11+, unlimited on 2.9)
    consumers: int
    entries: int  # messages kept (every key's last BUCKET_HISTORY revisions)
    last_revision: int
    direct_gets: bool
    server: str

    def as_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def bucket_info(bucket: str, info: StreamInfo, server: str) -> BucketInfo:
    """A BucketInfo from the stream's info."""
    c, st = info.config, info.state
    return BucketInfo(
        bucket=bucket,
        stream=c.name or stream_name(bucket),
        replicas=c.num_replicas or 1,
        history=c.max_msgs_per_subject or 0,
        max_value_size=c.max_msg_size or -1,
        max_consumers=c.max_consumers if c.max_consumers is not None else -1,
        consumers=st.consumer_count or 0,
        entries=st.messages or 0,
        last_revision=st.last_seq or 0,
        direct_gets=bool(c.allow_direct),
        server=server,
    )
