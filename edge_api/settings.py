"""The edge's settings, read once from ``BATON_EDGE_*`` environment variables.

Verification is strict by default. Exactly one key source is configured: a JWKS
URL, PEM public key files, or (explicitly, alone) an HS256 shared secret.
Asymmetric and symmetric algorithms never share one verifier: a public key must
never be accepted as an HMAC secret.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
MAX_LEEWAY = 60.0
MIN_SECRET_BYTES = 32
CLAIM_NAME = r"^[A-Za-z_][A-Za-z0-9_.:/\-]{0,127}$"


class EdgeSettings(BaseSettings):
    """Who issues the tokens the edge accepts, where their keys are, and limits."""

    model_config = SettingsConfigDict(env_prefix="BATON_EDGE_", extra="ignore")

    issuer: str = Field(default="baton-dev", min_length=1)
    audience: str = Field(default="baton", min_length=1)
    jwks_url: str | None = None
    public_keys: tuple[Path, ...] = ()
    hs256_secret: SecretStr | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: float = Field(default=30.0, ge=0, le=MAX_LEEWAY)
    roles_claim: str = Field(default="roles", pattern=CLAIM_NAME)
    tenant_claim: str | None = Field(default=None, pattern=CLAIM_NAME)

    jwks_timeout: float = Field(default=3.0, gt=0, le=30)
    jwks_cache_ttl: float = Field(default=300.0, gt=0)
    jwks_refresh_cooldown: float = Field(default=30.0, ge=1)

    max_body_bytes: int = Field(default=64 * 1024, ge=1, le=16 * 1024 * 1024)
    reply_timeout: float = Field(default=10.0, gt=0, le=120)
    publish_timeout: float = Field(default=5.0, gt=0, le=60)
    # Seconds between AMQP heartbeats: a broker silent for about three of them
    # is taken for gone and readiness turns 503 (RabbitMQ's own 60 s would
    # take three minutes).
    heartbeat: int = Field(default=10, ge=1, le=60)
    retry_after: int = Field(default=5, ge=1, le=3600)
    receipts_max: int = Field(default=10_000, ge=1)
    receipts_ttl: float = Field(default=3600.0, gt=0)
    startup_wait: float = Field(default=5.0, ge=0)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - ASYMMETRIC_ALGORITHMS - SYMMETRIC_ALGORITHMS
        if unknown:
            raise ValueError(f"unsupported algorithms: {', '.join(sorted(unknown))}")
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _secure_jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
            return value
        raise ValueError("jwks_url must be https (plain http only on loopback)")

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        sources = [
            name
            for name, configured in (
                ("jwks_url", self.jwks_url is not None),
                ("public_keys", bool(self.public_keys)),
                ("hs256_secret", self.hs256_secret is not None),
            )
            if configured
        ]
        if len(sources) != 1:
            raise ValueError(
                "configure exactly one key source (jwks_url, public_keys or "
                f"hs256_secret), got: {', '.join(sources) or 'none'}"
            )
        symmetric = set(self.algorithms) & SYMMETRIC_ALGORITHMS
        if self.hs256_secret is not None:
            if set(self.algorithms) != {"HS256"}:
                raise ValueError("hs256_secret requires algorithms to be exactly HS256")
            if len(self.hs256_secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"hs256_secret must be at least {MIN_SECRET_BYTES} bytes"
                )
        elif symmetric:
            raise ValueError("HS256 needs hs256_secret, and then no other algorithm")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
