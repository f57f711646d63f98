"""nats-py's exceptions become typed store errors (callers match types, never text)."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from ikto.store import errors as e


def api(code: int, desc: str) -> nats.js.errors.APIError:
    err = nats.js.errors.APIError()
    err.err_code, err.description = code, desc
    return err


@pytest.mark.parametrize(
    ("exc", "kind", "needle"),
    [
        (nats.js.errors.KeyWrongLastSequenceError(), e.RevisionMismatchError, "revision mismatch"),
        (api(10071, "wrong last sequence: 4"), e.RevisionMismatchError, "wrong last sequence"),
        (api(10164, "wrong last msg ID"), e.RevisionMismatchError, "revision mismatch"),
        (api(10059, "stream not found"), e.BucketNotFoundError, "bucket b does not exist"),
        (api(10026, "maximum consumers limit reached"), e.ConsumerLimitError, "max-consumers"),
        (nats.errors.NoRespondersError(), e.StoreError, "no JetStream on the server"),
        (TimeoutError(), e.StoreError, "timed out after 5 s"),
        (api(10074, "some other problem"), e.StoreError, "some other problem (error 10074)"),
    ],
)
def test_translate(exc: BaseException, kind: type[e.StoreError], needle: str) -> None:
    got = e.translate("doing x", exc, bucket="b", timeout=5.0, connected=True, recent_denial=None)
    assert type(got) is kind and needle in str(got) and str(got).startswith("NATS: doing x: ")


def test_a_timeout_right_after_a_denial_says_what_the_server_said() -> None:
    got = e.translate("doing x", TimeoutError(), bucket="b", timeout=5.0, connected=False,
                      recent_denial="permissions violation for publish to x")
    assert "while disconnected" in str(got) and "the server recently said: permissions violation" in str(got)
