"""Signed checkpoints for the audit log: an Ed25519 key kept apart from the log.

A hash chain shows edits, but not a forger who rewrites every hash and the head. So every
`checkpoint_every` entries, when a log file is rotated and when the writer closes, the writer
appends a checkpoint entry to the chain::

    {"seq":1001,"prev":"<hash of 1000>","event":{"time":..,"audit":"checkpoint","every":1000,
     "key":"<key id>","sig":"<base64 Ed25519 signature>"},"hash":".."}

The signature covers `checkpoint_message(seq, prev, every)`: the checkpoint's own seq, the hash
of the entry before it (hence, through the chain, every entry before it) and the interval. With
the public key, `verify` checks each signature and that no more than `every` entries follow one
another unsigned, so a rewritten chain fails: its hashes no longer match the signed ones, and
checkpoints cannot be made without the private key. What the key cannot cover: the entries after
the last checkpoint of a log still being written (at most `every`), and a log cut back to an
earlier checkpoint with its head file replaced (keep copies of rotated files elsewhere).

The private key file (PKCS#8 PEM, 0600, created on first start) lives outside the log's folder:
`security.audit.signing_key_file`, by default `<log folder>-keys/<log name>.key`, so that copying
or shipping the log folder never carries it. `mlo audit public-key` prints the public half.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_offload.config import AuditSettings
from ml_offload.errors import ConfigError

if TYPE_CHECKING:  # cryptography (~8 MB) is imported where a key is first used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

CHECKPOINT = "checkpoint"  # the event's "audit" value


def signing_key_path(settings: AuditSettings, log: Path) -> Path:
    """`signing_key_file`, else `<log folder>-keys/<log name>.key`: beside the folder, not in it."""
    if settings.signing_key_file is not None:
        return settings.signing_key_file
    folder = log.parent
    return folder.with_name(folder.name + "-keys") / (log.name + ".key")


def checkpoint_message(seq: int, prev: str, every: int) -> bytes:
    return b"mlo-audit-checkpoint/1 %d %s %d" % (seq, prev.encode("ascii"), every)


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Signer:
    """Signs checkpoints with the private key (the writer thread's only use of it)."""

    def __init__(self, private: Ed25519PrivateKey, every: int) -> None:
        self._private = private
        self.every = every
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def checkpoint(self, seq: int, prev: str, time_iso: str | None) -> dict[str, Any]:
        """The event of checkpoint entry `seq`, whose `prev` is `prev`."""
        sig = self._private.sign(checkpoint_message(seq, prev, self.every))
        return {
            "time": time_iso,
            "audit": CHECKPOINT,
            "every": self.every,
            "key": self.key_id,
            "sig": base64.b64encode(sig).decode("ascii"),
        }


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key at `path`; a new one written there (0600, folder 0700) when absent.

    Raises ConfigError naming the setting when it cannot be read or written."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise _key_error(path, exc.strerror or str(exc)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _key_error(path, f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _key_error(path, "not an Ed25519 key")
    return key


def _create(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return load_or_create_key(path)
    except OSError as exc:
        raise _key_error(path, exc.strerror or str(exc)) from None
    return key


def _key_error(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"cannot use the audit signing key {path}: {why}; set security.audit.signing_key_file "
        "(outside the log's folder) or security.audit.sign = false"
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM file (`mlo audit public-key`'s output) or the private key file.

    Raises ValueError saying what is wrong."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key: object = private.public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key


def check_checkpoint(
    keys: list[Ed25519PublicKey], seq: int, prev: str, event: dict[str, Any]
) -> str | None:
    """None when one of `keys` signed this checkpoint event; else what is wrong."""
    from cryptography.exceptions import InvalidSignature

    every, sig = event.get("every"), event.get("sig")
    if type(every) is not int or every < 1 or not isinstance(sig, str):
        return "a checkpoint without a valid interval or signature"
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return "a checkpoint whose signature is not base64"
    message = checkpoint_message(seq, prev, every)
    for key in keys:
        try:
            key.verify(raw, message)
            return None
        except InvalidSignature:
            continue
    return "its signature does not match (the chain before it was rewritten, or another key)"
