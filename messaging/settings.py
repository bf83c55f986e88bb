"""Broker and runtime settings, read once from the environment at startup."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from messaging.topology import Topology


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
    stop_timeout: float = Field(default=30.0, gt=0)
    request_timeout: float = Field(default=10.0, gt=0)
    # Quorum queues need RabbitMQ 3.8 or newer; classic queues have no delivery
    # limit, so a message that kills the consumer's connection is not bounded.
    quorum_queues: bool = True

    def topology(self) -> Topology:
        return Topology(
            prefix=self.prefix,
            retry_delays=self.retry_delays,
            delivery_limit=self.delivery_limit,
            quorum=self.quorum_queues,
        )
