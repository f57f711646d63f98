import os
import stat
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikto import keys
from ikto.errors import UsageError


def wg(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True).stdout


def test_pubkey_matches_wg_pubkey_for_wg_genkey_keys():
    for _ in range(20):
        priv = wg("genkey")
        assert keys.public_key(priv) + "\n" == wg("pubkey", stdin=priv)


def test_our_genkey_is_accepted_and_clamped_like_wg():
    for _ in range(20):
        priv = keys.generate_private_key()
        raw = keys.decode_key(priv)
        assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64 == 64
        assert keys.public_key(priv) + "\n" == wg("pubkey", stdin=priv + "\n")


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_pubkey_of_any_32_bytes_matches_wg(raw):
    priv = keys.encode_key(raw)
    assert keys.public_key(priv) + "\n" == wg("pubkey", stdin=priv)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 44, "!" * 43 + "=", keys.encode_key(b"x" * 31)])
def test_bad_keys_rejected(bad):
    with pytest.raises(ValueError):
        keys.public_key(bad)


def test_all_zero_public_key_invalid():
    assert not keys.is_valid_public_key(keys.encode_key(bytes(32)))
    assert keys.is_valid_public_key(keys.public_key(keys.generate_private_key()))


def test_write_private_key_modes_and_never_overwrites(tmp_path):
    path = tmp_path / "new" / "dir" / "private.key"
    key, created = keys.write_private_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created2 = keys.write_private_key(path)
    assert not created2 and again == key
    assert path.read_text().strip() == key


def test_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "k"
    keys.write_private_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match=r"chmod 600"):
        keys.read_private_key(path)


def test_missing_key_says_how_to_create(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        keys.read_private_key(tmp_path / "nope")


def test_agent_derives_its_public_key_with_wg_pubkey_like_keys_does():
    """The agent asks `wg pubkey` (ikto.wg) so it never loads cryptography; both must agree."""
    from ikto.wg import Wg

    for _ in range(5):
        priv = keys.generate_private_key()
        assert Wg("unused").public_key(priv) == keys.public_key(priv)


def test_the_agent_process_does_not_load_cryptography():
    """6.5 MiB of RSS (benchmark P5): only `ikto keygen/pubkey/init` may import it."""
    code = (
        "import sys; import ikto.cli, ikto.agent, ikto.api, ikto.store, ikto.render, ikto.wg;"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
