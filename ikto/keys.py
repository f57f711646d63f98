"""WireGuard (X25519) keys: generate, derive, read and store them like `wg` does."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from ikto.errors import UsageError

KEY_LEN = 32


def decode_key(text: str) -> bytes:
    """Decode a base64 WireGuard key (44 chars, 32 bytes); raise ValueError otherwise."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise ValueError("Key is not the correct length or format")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError("Key is not the correct length or format") from e
    if len(raw) != KEY_LEN:
        raise ValueError("Key is not the correct length or format")
    return raw


def encode_key(raw: bytes) -> str:
    """Encode 32 raw bytes as a base64 WireGuard key."""
    return base64.b64encode(raw).decode("ascii")


def generate_private_key() -> str:
    """A new private key, clamped exactly as `wg genkey` clamps it."""
    raw = bytearray(os.urandom(KEY_LEN))
    # Curve25519 clamping, as wg genkey does (curve25519_clamp_secret).
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return encode_key(bytes(raw))


def public_key(private_b64: str) -> str:
    """The public key of a base64 private key, byte for byte what `wg pubkey` prints."""
    # Imported here: loading cryptography costs 6.5 MiB of RSS, and the long-running agent
    # asks `wg pubkey` instead (ikto.wg.Wg.public_key), so it never pays for it.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = decode_key(private_b64)
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return encode_key(pub)


def is_valid_public_key(text: str) -> bool:
    """True if text is a base64 32-byte key that is not all zeros."""
    try:
        raw = decode_key(text)
    except ValueError:
        return False
    return raw != bytes(KEY_LEN)


def check_key_file_mode(path: Path) -> None:
    """Refuse a key file that group or others can read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"private key {path} does not exist (create one with: ikto init)") from None
    except PermissionError:
        raise UsageError(f"private key {path}: permission denied (run as root)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"private key {path} is not a regular file")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise UsageError(
            f"private key {path} is accessible by group or others (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )


def read_private_key(path: Path) -> str:
    """Read and check a private key file (mode 0600 or stricter, valid key)."""
    check_key_file_mode(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        decode_key(text)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"private key {path} is not a WireGuard key (expected 44 base64 chars)") from None
    return text


def write_private_key(path: Path) -> tuple[str, bool]:
    """Create a new key at path (0600, new parent dirs 0700); keep an existing one.

    Returns (private_key, created). An existing file is never overwritten.
    """
    if path.exists():
        return read_private_key(path), False
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
    key = generate_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_private_key(path), False
    except PermissionError:
        raise UsageError(f"cannot create private key {path}: permission denied (run as root)") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return key, True
