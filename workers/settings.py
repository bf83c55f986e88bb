"""Settings of the worker processes, read once from the environment at startup."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Where the reference services keep their state, and how the scheduler wakes."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    state_dir: Path = Path(".baton")
    # The scheduler never sleeps longer than this, so a standing job registered
    # while it sleeps is picked up within one poll.
    scheduler_poll: float = Field(default=5.0, gt=0, le=3600)
    # Standing refreshes run at most this often, whatever a user asks for.
    min_refresh_minutes: int = Field(default=1, ge=1)

    def database(self, service: str) -> Path:
        """The SQLite file that holds `service`'s state."""
        return self.state_dir / f"{service}.sqlite3"
