"""The reference system, assembled: each service over its own SQLite state.

This is the one place that knows every reference service; the ``baton`` command
and the tests build processes from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.inbox import SqliteStore
from workers.scheduler import Clock, Scheduler
from workers.service import Service
from workers.services.core import PlanStore, core_service
from workers.services.notifications import NotificationStore, notifications_service
from workers.services.planning_jobs import add_planning_jobs, open_scheduler_store
from workers.services.users import ProfileStore, users_service
from workers.settings import WorkerSettings


@dataclass(frozen=True)
class Part:
    """A reference service and the database its handlers write."""

    service: Service
    store: SqliteStore

    def close(self) -> None:
        self.store.close()


def _users(settings: WorkerSettings) -> Part:
    store = ProfileStore(settings.database("users"))
    return Part(users_service(store), store)


def _core(settings: WorkerSettings) -> Part:
    store = PlanStore(settings.database("core"))
    return Part(core_service(store), store)


def _notifications(settings: WorkerSettings) -> Part:
    store = NotificationStore(settings.database("notifications"))
    return Part(notifications_service(store), store)


BUILDERS: dict[str, Callable[[WorkerSettings], Part]] = {
    "users": _users,
    "core": _core,
    "notifications": _notifications,
}
SERVICES = tuple(BUILDERS)


def build(name: str, settings: WorkerSettings) -> Part:
    """Open `name`'s database and declare the service over it."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        known = ", ".join(SERVICES)
        raise ValueError(f"there is no service {name!r} (known: {known})") from None
    return builder(settings)


def build_scheduler(settings: WorkerSettings, clock: Clock | None = None) -> Scheduler:
    """The scheduler with the reference system's jobs and its own database."""
    store = open_scheduler_store(settings.database("scheduler"))
    scheduler = Scheduler(store, clock=clock, poll=settings.scheduler_poll)
    add_planning_jobs(scheduler, min_minutes=settings.min_refresh_minutes)
    return scheduler
