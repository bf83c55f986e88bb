"""Broker and runtime settings, read once from the environment at startup."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from messaging.topology import QuorumQueues, Topology

# Each delay is a queue per service, and the broker counts TTLs in whole
# milliseconds; a day is longer than any retry that is still worth making.
MAX_RETRIES: Final = 20
MIN_RETRY_DELAY: Final = 0.001
MAX_RETRY_DELAY: Final = 24 * 3600.0


class BrokerSettings(BaseSettings):
    """How a Baton process reaches RabbitMQ and handles the messages it consumes."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@localhost:5672/"),
        validation_alias=AliasChoices("AMQP_URL", "BATON_AMQP_URL"),
    )
    prefix: str = Field(default="baton", pattern=r"^[a-z][a-z0-9_\-]{0,31}$")
    prefetch: int = Field(default=32, ge=1, le=1000)
    confirm_timeout: float = Field(default=5.0, gt=0)
    handler_timeout: float = Field(default=30.0, gt=0)
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0)
    delivery_limit: int = Field(default=10, ge=1)
    max_body_bytes: int = Field(default=256 * 1024, ge=1)
    max_chain_depth: int = Field(default=8, ge=1, le=16)
    # Depth bounds a loop; this bounds the width of a fan-out: the events,
    # commands and requests one delivery may publish before it is quarantined.
    max_publishes_per_delivery: int = Field(default=100, ge=1, le=100_000)
    stop_timeout: float = Field(default=30.0, gt=0)
    request_timeout: float = Field(default=10.0, gt=0)
    # auto: quorum queues where the broker has them (3.8 on), else classic
    # queues with a warning; classic queues have no delivery limit.
    quorum_queues: QuorumQueues = QuorumQueues.AUTO
    # Trust (docs/security.md): off for local development, on in the compose
    # deployment. trust_publishers checks user_id against the declarations;
    # require_signatures also checks the signed identity against the key ring.
    trust_publishers: bool = False
    require_signatures: bool = False
    account_prefix: str = Field(default="", pattern=r"^[a-z0-9_\-]{0,32}$")
    signing_key_file: Path | None = None
    keyring_file: Path | None = None
    signature_ttl: float = Field(default=300.0, gt=0)
    origin_ttl: float = Field(default=3600.0, gt=0)
    # The management API, for `baton provision` and the startup self-check.
    management_url: SecretStr | None = None

    @field_validator("quorum_queues", mode="before")
    @classmethod
    def _quorum_spelling(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return QuorumQueues.TRUE if value else QuorumQueues.FALSE
        return value.lower() if isinstance(value, str) else value

    @field_validator("retry_delays")
    @classmethod
    def _growing_delays(cls, delays: tuple[float, ...]) -> tuple[float, ...]:
        shown = f"retry_delays {list(delays)}"
        if not delays:
            raise ValueError(
                f"{shown} is empty: give at least one delay in seconds, such as "
                "[1, 5, 30]; a failed handler is dead-lettered once they run out"
            )
        if len(delays) > MAX_RETRIES:
            raise ValueError(f"{shown} has {len(delays)} delays, over {MAX_RETRIES}")
        for delay in delays:
            # Written so that NaN fails it too.
            if not MIN_RETRY_DELAY <= delay <= MAX_RETRY_DELAY:
                raise ValueError(
                    f"{shown}: {delay} is outside {MIN_RETRY_DELAY} to "
                    f"{MAX_RETRY_DELAY:.0f} seconds"
                )
        for before, after in pairwise(delays):
            if after < before:
                raise ValueError(
                    f"{shown}: {after} comes after {before}; each retry waits at "
                    "least as long as the one before"
                )
        return delays

    def topology(self) -> Topology:
        return Topology(
            prefix=self.prefix,
            retry_delays=self.retry_delays,
            delivery_limit=self.delivery_limit,
            quorum=self.quorum_queues,
        )
