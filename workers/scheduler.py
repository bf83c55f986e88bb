"""The scheduler: jobs declared in code, fired as a declared principal, exactly once.

A job names its schedule, the command it sends, and the principal it runs as:
the scheduler itself with its own roles, or a user on whose behalf the job was
set up. Never "no identity".

Each tick's message gets an id derived from the job, the tick's time and the
target, so two replicas firing the same tick, or a restart that fires it again,
send the same id, and the receiving service's inbox keeps one side effect. The
last fired tick of every job is kept in SQLite; ticks missed while no scheduler
ran follow the job's :class:`~workers.schedule.Missed` policy. Time comes from an
injectable :class:`Clock`, so tests fire ticks without waiting for them.

Jobs declared in code are the same on every replica. Jobs from a source, such
as users' standing refreshes, are only where the source reads them: replicas
must share the scheduler's SQLite file (one ``BATON_STATE_DIR``, on one host).
TODO(a server database behind SchedulerStore): replicas on several hosts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

from pydantic import BaseModel

from contracts import Contract
from messaging.errors import PublishError
from messaging.identity import Origin, Principal, PrincipalKind
from messaging.publisher import Publisher
from messaging.settings import BrokerSettings
from messaging.signing import Signer
from messaging.topology import Topology
from messaging.trust import TrustPolicy
from workers.errors import ScheduleError, UndeclaredMessage
from workers.inbox import SqliteStore
from workers.schedule import SKIP, Missed, Schedule
from workers.service import Service
from workers.worker import Worker

logger = logging.getLogger(__name__)

# Namespace of tick message ids: uuid5(TICK_IDS, job | tick | target).
TICK_IDS: Final = uuid.UUID("0b7e5f0e-3f3a-5d8e-9a57-6a1c2d4e8f10")

SCHEMA = """
CREATE TABLE IF NOT EXISTS fired (
    job        TEXT PRIMARY KEY,
    last_tick  TEXT NOT NULL
);
"""


class Clock(Protocol):
    """Where the scheduler reads the time and waits."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Job:
    """A command sent on a schedule, as a declared principal."""

    name: str
    schedule: Schedule
    principal: Principal
    contract: Contract
    payload: BaseModel
    missed: Missed = SKIP

    def message_id(self, tick: datetime) -> str:
        """The id of this job's message for `tick`: the same on every replica."""
        target = f"{self.contract.name}:{self.principal.subject}"
        return uuid.uuid5(TICK_IDS, f"{self.name}|{tick.isoformat()}|{target}").hex


@dataclass(frozen=True)
class Fired:
    """One tick's message, sent."""

    job: str
    tick: datetime
    message_id: str


JobSource = Callable[[], Awaitable[Iterable[Job]]]


class SchedulerStore(SqliteStore):
    """The last tick each job fired, beside the scheduler's other state."""

    def __init__(self, path: Path, schema: str = "") -> None:
        super().__init__(path, SCHEMA + schema)

    async def last_fired(self, job: str) -> datetime | None:
        rows = await self.query("SELECT last_tick FROM fired WHERE job = ?", (job,))
        return datetime.fromisoformat(rows[0]["last_tick"]) if rows else None

    async def record(self, job: str, tick: datetime) -> None:
        # max() keeps a slower replica from moving a job's tick backwards.
        async with self.write() as db:
            db.execute(
                "INSERT INTO fired (job, last_tick) VALUES (?, ?) "
                "ON CONFLICT (job) DO UPDATE SET "
                "last_tick = max(last_tick, excluded.last_tick)",
                (job, tick.isoformat(timespec="microseconds")),
            )


class Scheduler:
    """Fires the due ticks of every job; also a service that can take orders."""

    def __init__(
        self,
        store: SchedulerStore,
        *,
        name: str = "scheduler",
        clock: Clock | None = None,
        poll: float = 5.0,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.poll = poll
        # The scheduler brings users into the system (their standing jobs), so
        # it is an entry point like the edge.
        self.service = Service(name, introduces_users=True)
        self._jobs: dict[str, Job] = {}
        self._sources: list[JobSource] = []
        self._publisher: Publisher | None = None
        self._topology = Topology()
        self._worker: Worker | None = None
        self._loop: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.service.name

    def add(self, job: Job) -> None:
        """Declare a job; the command it sends is added to the service's emits."""
        self._check(job)
        if job.name in self._jobs:
            raise ScheduleError(f"job {job.name!r} is declared twice")
        self.service.emits(job.contract)
        self._jobs[job.name] = job

    def add_source(self, source: JobSource) -> None:
        """Jobs that come and go at run time, such as users' standing jobs."""
        self._sources.append(source)

    def as_itself(self, roles: Iterable[str]) -> Principal:
        """The scheduler's own service principal; its roles become declared ones."""
        principal = Principal.service(self.name, roles, origin=Origin.SCHEDULE)
        self.service.acts_with(principal.roles)
        return principal

    def for_user(
        self, subject: str, roles: Iterable[str], tenant: str | None = None
    ) -> Principal:
        """A user on whose behalf a job was set up."""
        return Principal.user(
            subject, roles, entered_by=self.name, origin=Origin.SCHEDULE, tenant=tenant
        )

    def bind(self, publisher: Publisher, topology: Topology) -> None:
        """Publish through `publisher` (the service's own, once it is running)."""
        self._publisher = publisher
        self._topology = topology

    async def jobs(self) -> list[Job]:
        """Every job: those declared in code, then those the sources hold now.

        A source that fails, or a job of one that breaks the rules, is logged
        and left out of this round; every other job still fires.
        """
        found = list(self._jobs.values())
        for source in self._sources:
            found += await self._offered_by(source)
        return found

    async def fire_due(self, now: datetime | None = None) -> list[Fired]:
        """Send every tick that is due at `now` and record it as fired.

        A job that fails is logged and skipped: the others still fire, and its
        tick stays due for the next round.
        """
        now = now or self.clock.now()
        fired: list[Fired] = []
        for job in await self.jobs():
            try:
                fired += await self._fire(job, now)
            except Exception:  # one job must not hold back the rest
                logger.exception("%s: job %r failed this round", self.name, job.name)
        return fired

    async def next_wake(self, now: datetime) -> datetime:
        """When the next tick of any job is due, polling at least every `poll`."""
        wake = now + timedelta(seconds=self.poll)
        for job in await self.jobs():
            wake = min(wake, job.schedule.after(now))
        return wake

    async def run(self) -> None:
        """Fire due ticks until cancelled; a failed round is logged and retried.

        After a failure the loop waits 1 s, then 2 s, 4 s... up to `poll`, so a
        broken store or schedule neither ends the loop nor spins it.
        """
        failures = 0
        while True:
            try:
                delay = await self._round()
                failures = 0
            except Exception:  # the loop must outlive any one round
                delay = min(self.poll, 2.0**failures)
                failures += 1
                logger.exception(
                    "%s: scheduling round failed; trying again in %ss", self.name, delay
                )
            await self.clock.sleep(delay)

    @property
    def essential_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks without which this scheduler has stopped working."""
        tasks = self._worker.essential_tasks if self._worker is not None else []
        return tasks if self._loop is None else [*tasks, self._loop]

    async def start(
        self,
        settings: BrokerSettings,
        *,
        trust: TrustPolicy | None = None,
        signer: Signer | None = None,
    ) -> None:
        """Start taking orders on the service queue and firing ticks.

        With a `signer`, every tick's message carries the scheduler's signature.
        """
        self._worker = Worker(self.service, settings, trust=trust, signer=signer)
        await self._worker.start()
        self.bind(self._worker.consumer.publisher, self._worker.consumer.topology)
        self._loop = asyncio.create_task(self.run(), name=f"{self.name}:ticks")
        logger.info("%s: %d jobs declared in code", self.name, len(self._jobs))

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None

    async def _round(self) -> float:
        """Fire what is due; the seconds to sleep until the next round."""
        now = self.clock.now()
        await self.fire_due(now)
        wake = await self.next_wake(now)
        return max(0.0, (wake - self.clock.now()).total_seconds())

    async def _offered_by(self, source: JobSource) -> list[Job]:
        try:
            offered = list(await source())
        except Exception:  # one broken source must not stop the rest
            logger.exception(
                "%s: a job source failed; its jobs wait for the next round", self.name
            )
            return []
        valid: list[Job] = []
        for job in offered:
            try:
                self._check(job)
            except ScheduleError as exc:
                logger.error("%s: skipped job %r: %s", self.name, job.name, exc)
                continue
            valid.append(job)
        return valid

    async def _fire(self, job: Job, now: datetime) -> list[Fired]:
        fired: list[Fired] = []
        last = await self.store.last_fired(job.name)
        for tick in job.missed.due(job.schedule, last, now):
            try:
                message_id = await self._send(job, tick)
            except PublishError as exc:
                # The tick stays due and is sent again, under the same id.
                logger.warning("%s: tick %s not sent: %s", job.name, tick, exc)
                break
            await self.store.record(job.name, tick)
            fired.append(Fired(job.name, tick, message_id))
        return fired

    async def _send(self, job: Job, tick: datetime) -> str:
        if self._publisher is None:
            raise RuntimeError(f"{self.name} is not started: nothing to publish with")
        contract = job.contract
        if not self.service.publishes(contract.route, contract.name):
            raise UndeclaredMessage(f"{self.name} does not declare {contract.name}")
        message_id = job.message_id(tick)
        await self._publisher.publish(
            self._topology.exchange_for(contract.route),
            contract.name,
            message_type=contract.name,
            body=job.payload,
            principal=job.principal,
            message_id=message_id,
        )
        logger.info("%s: fired %s for tick %s", job.name, contract.name, tick)
        return message_id

    def _check(self, job: Job) -> None:
        principal = job.principal
        if principal.origin is not Origin.SCHEDULE:
            raise ScheduleError(f"job {job.name!r} must run with origin schedule")
        if principal.kind is PrincipalKind.SERVICE and principal.subject != self.name:
            raise ScheduleError(
                f"job {job.name!r} runs as service {principal.subject!r}; the "
                f"scheduler acts only as itself ({self.name!r}) or for a user"
            )
        if principal.actors != (self.name,):
            raise ScheduleError(
                f"job {job.name!r} must enter through {self.name!r}, "
                f"not {' > '.join(principal.actors)}"
            )
        if not isinstance(job.payload, job.contract.payload):
            raise ScheduleError(
                f"job {job.name!r} sends {type(job.payload).__name__}, but "
                f"{job.contract.name} carries {job.contract.payload.__name__}"
            )
