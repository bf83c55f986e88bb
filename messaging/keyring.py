"""Signing keys and the key ring: who owns which Ed25519 key, by key id.

A service signs with its private key (:class:`SigningKey`, a PKCS#8 PEM file
with the service and key id on a comment line above it). Consumers verify with
the public key ring (:class:`KeyRing`, a JSON file): key id -> service, public
key and an optional time after which the key is refused. Several keys per
service let keys rotate: add the new one, switch the signer, retire the old one
after a grace period (``baton keys``). A consumer reads its ring through
:class:`KeyRingFile`, which reads the file again when it changes, so a running
consumer follows a rotation without a restart.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from messaging.errors import SigningConfigError

logger = logging.getLogger(__name__)

KID_BYTES: Final = 8
# How often a consumer looks whether its key ring file changed, in seconds.
RELOAD_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class RingKey:
    """A public key in the ring: whose it is, and until when it may still verify."""

    kid: str
    service: str
    key: Ed25519PublicKey
    retire_after: float | None = None

    def usable_at(self, now: float) -> bool:
        return self.retire_after is None or now <= self.retire_after


class KeyRing:
    """Every public key a consumer accepts, by key id, so that keys can rotate."""

    def __init__(self, keys: Iterable[RingKey] = ()) -> None:
        self._keys = {key.kid: key for key in keys}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[RingKey]:
        return iter(sorted(self._keys.values(), key=lambda k: (k.service, k.kid)))

    def get(self, kid: str) -> RingKey | None:
        return self._keys.get(kid)

    def with_key(self, key: RingKey) -> KeyRing:
        return KeyRing([*self._keys.values(), key])

    def without(self, kid: str) -> KeyRing:
        return KeyRing(k for k in self._keys.values() if k.kid != kid)

    def retiring(self, kid: str, after: float) -> KeyRing:
        """The same ring, with key `kid` refused from time `after` on."""
        key = self._keys.get(kid)
        if key is None:
            raise SigningConfigError(f"key {kid!r} is not in the ring")
        retired = RingKey(key.kid, key.service, key.key, after)
        return KeyRing([*(k for k in self._keys.values() if k.kid != kid), retired])

    def to_json(self) -> str:
        entries = [
            {
                "kid": key.kid,
                "service": key.service,
                "public_key": b64(key.key.public_bytes_raw()),
                "retire_after": key.retire_after,
            }
            for key in self
        ]
        return json.dumps({"keys": entries}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        try:
            document = json.loads(text)
            keys = [_ring_key(entry) for entry in document["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SigningConfigError(f"the key ring is malformed: {exc}") from exc
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise SigningConfigError(f"cannot read the key ring {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())


FileStamp = tuple[int, int, int]


class KeyRingFile:
    """A key ring file, read again when it changes (checked every `interval` s).

    A file that cannot be read, is malformed or holds no key (half written, or a
    mistake) leaves the ring in use as it was, with a warning; the next change
    is tried again. At start the file must be readable: :meth:`open` raises.
    """

    def __init__(
        self,
        path: Path,
        ring: KeyRing,
        *,
        interval: float = RELOAD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._ring = ring
        self._stamp = _stamp(path)
        self._refused: FileStamp | None = None
        self._interval = interval
        self._clock = clock
        self._next_look = clock() + interval

    @classmethod
    def open(cls, path: Path, **options: Any) -> KeyRingFile:
        return cls(path, KeyRing.load(path), **options)

    def current(self) -> KeyRing:
        """The ring as the file holds it now (at most `interval` s old)."""
        now = self._clock()
        if now < self._next_look:
            return self._ring
        self._next_look = now + self._interval
        stamp = _stamp(self.path)
        if stamp != self._stamp and stamp != self._refused:
            self._reload(stamp)
        return self._ring

    def _reload(self, stamp: FileStamp) -> None:
        try:
            ring = KeyRing.load(self.path)
            if not len(ring):
                raise SigningConfigError(f"the key ring {self.path} holds no key")
        except SigningConfigError as exc:
            self._refused = stamp
            logger.warning("keeping the key ring in use: %s", exc)
            return
        self._ring, self._stamp, self._refused = ring, stamp, None
        logger.info("reloaded the key ring %s: %d keys", self.path, len(ring))


def _stamp(path: Path) -> FileStamp:
    """What tells one version of a file from the next; zeros when it is missing."""
    try:
        info = path.stat()
    except OSError:
        return (0, 0, 0)
    return (info.st_mtime_ns, info.st_size, info.st_ino)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A service's private key and the id its public half has in the ring."""

    service: str
    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, service: str) -> SigningKey:
        kid = f"{service}-{secrets.token_hex(KID_BYTES)}"
        return cls(service, kid, Ed25519PrivateKey.generate())

    def public(self) -> RingKey:
        return RingKey(self.kid, self.service, self.private.public_key())

    def to_pem(self) -> bytes:
        """PKCS#8 PEM with the service and key id as a comment line above it."""
        body = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return f"# baton-key service={self.service} kid={self.kid}\n".encode() + body

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        first, _, rest = data.partition(b"\n")
        fields = dict(
            item.split("=", 1) for item in first.decode().split()[2:] if "=" in item
        )
        if not first.startswith(b"# baton-key ") or set(fields) != {"service", "kid"}:
            raise SigningConfigError(
                "a signing key file starts with '# baton-key service=... kid=...'"
            )
        key = serialization.load_pem_private_key(rest, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningConfigError("a signing key must be an Ed25519 private key")
        return cls(fields["service"], fields["kid"], key)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            return cls.from_pem(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SigningConfigError(f"cannot load signing key {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write the key readable by its owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(self.to_pem())


def _ring_key(entry: Mapping[str, Any]) -> RingKey:
    retire_after = entry.get("retire_after")
    return RingKey(
        kid=str(entry["kid"]),
        service=str(entry["service"]),
        key=Ed25519PublicKey.from_public_bytes(unb64(str(entry["public_key"]))),
        retire_after=None if retire_after is None else float(retire_after),
    )


def b64(data: bytes) -> str:
    """URL-safe base64 without padding, as in the assertions and the ring."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Decode :func:`b64` text; a character outside the alphabet is an error."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)
