"""A development identity provider: a local key pair, and tokens signed with it.

For the first minute with Baton there is no real identity provider. ``baton
token`` mints tokens with an Ed25519 key pair generated on first use under
``.baton/`` (git-ignored; the private key readable by its owner only), and
``baton edge`` trusts that key's public half when no other key source is
configured. A configured JWKS URL, PEM key or secret always wins: the dev key
is then not trusted at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge_api.settings import EdgeSettings

DEV_DIRECTORY: Final = Path(".baton")
KID: Final = "edge-dev"
ALGORITHM: Final = "EdDSA"
MAX_TTL: Final = 24 * 3600
KEY_SOURCE_VARIABLES: Final = (
    "BATON_EDGE_JWKS_URL",
    "BATON_EDGE_PUBLIC_KEYS",
    "BATON_EDGE_HS256_SECRET",
)


class DevIssuerSettings(BaseSettings):
    """Where the development key pair lives (``BATON_EDGE_DEV_KEY_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="BATON_EDGE_DEV_", extra="ignore")

    key_dir: Path = DEV_DIRECTORY


@dataclass(frozen=True)
class DevIssuer:
    """Mints development tokens with the key pair kept in `directory`."""

    directory: Path = DEV_DIRECTORY

    @classmethod
    def from_environment(cls) -> DevIssuer:
        return cls(DevIssuerSettings().key_dir)

    @property
    def private_key_file(self) -> Path:
        return self.directory / f"{KID}.key"

    @property
    def public_key_file(self) -> Path:
        # The verifier names a PEM key by its file name up to the first dot.
        return self.directory / f"{KID}.pub.pem"

    def ensure_keys(self) -> Ed25519PrivateKey:
        """The private key, generated (with its public half) on first use."""
        if self.private_key_file.exists():
            key = serialization.load_pem_private_key(
                self.private_key_file.read_bytes(), password=None
            )
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{self.private_key_file} is not an Ed25519 key")
            return key
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(self.private_key_file, private, mode=0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_new(self.public_key_file, public, mode=0o644)
        return key

    def mint(
        self,
        settings: EdgeSettings,
        subject: str,
        roles: Iterable[str],
        *,
        tenant: str | None = None,
        ttl: int = 3600,
    ) -> str:
        """A token the edge configured by `settings` accepts, for `subject`."""
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": settings.issuer,
            "aud": settings.audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl,
            settings.roles_claim: sorted(set(roles)),
        }
        if tenant is not None:
            if settings.tenant_claim is None:
                raise ValueError(
                    "the edge reads no tenant claim (BATON_EDGE_TENANT_CLAIM)"
                )
            claims[settings.tenant_claim] = tenant
        return jwt.encode(
            claims, self.ensure_keys(), algorithm=ALGORITHM, headers={"kid": KID}
        )

    def edge_settings(self, environ: Mapping[str, str] | None = None) -> EdgeSettings:
        """Settings from the environment, trusting the dev key when nothing else is."""
        if uses_dev_key(environ):
            self.ensure_keys()
            return EdgeSettings(public_keys=(self.public_key_file,))
        return EdgeSettings()


def uses_dev_key(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment configures no key source of its own."""
    names = {name.upper() for name in (os.environ if environ is None else environ)}
    return not names.intersection(KEY_SOURCE_VARIABLES)


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
