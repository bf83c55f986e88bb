"""``baton run``, ``baton worker <service>`` and ``baton scheduler``.

``baton run`` is the whole reference system in one process: the edge (when its
package is installed), every reference service and the scheduler, against the
broker at ``AMQP_URL``; like ``baton edge``, its edge trusts the development key
of ``baton token`` when no key source is configured. ``baton worker <service>``
runs one service alone, as a container would; ``baton scheduler`` runs the
scheduler alone. Each prints where its parts listen and stops cleanly on SIGINT
or SIGTERM: no new messages are taken, the ones in flight finish and are acked,
then the connections close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn

from baton.provision_commands import reference_declarations
from messaging.connection import redacted
from messaging.declaration import ServiceDeclaration
from messaging.errors import BrokerUnavailable, TrustConfigError
from messaging.logcontext import configure_logging
from messaging.selfcheck import verify_startup
from messaging.settings import BrokerSettings
from messaging.signing import Signer
from messaging.trust import TrustPolicy
from workers.scheduler import Scheduler
from workers.settings import WorkerSettings
from workers.system import SERVICES, Part, build, build_scheduler
from workers.worker import Worker

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupFailed(Exception):
    """A part of the system could not start; the message says which and why."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``worker`` and ``scheduler`` to the ``baton`` command."""
    run = commands.add_parser(
        "run", help="run the edge, every reference service and the scheduler"
    )
    run.add_argument(
        "--no-edge", action="store_true", help="run the services and scheduler only"
    )
    run.set_defaults(run=_run_all)

    worker = commands.add_parser("worker", help="run one reference service alone")
    worker.add_argument("service", choices=SERVICES)
    worker.set_defaults(run=_run_worker)

    scheduler = commands.add_parser("scheduler", help="run the scheduler alone")
    scheduler.set_defaults(run=_run_scheduler)


class Running(Protocol):
    """A part of the system this process runs."""

    name: str

    async def start(self) -> str:
        """Start, and say where the part listens."""
        ...

    async def stop(self) -> None: ...

    @property
    def essential_tasks(self) -> Sequence[asyncio.Task[Any]]:
        """Tasks whose end, before a stop, means the part stopped working."""
        ...


@dataclass
class ServicePart:
    """A reference service: its worker and the database it writes."""

    part: Part
    broker: BrokerSettings
    name: str = field(init=False)
    worker: Worker | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.name = self.part.service.name

    async def start(self) -> str:
        trust, signer = await _self_check(self.broker, self.name)
        self.worker = Worker(self.part.service, self.broker, trust=trust, signer=signer)
        await self.worker.start()
        return (
            f"consuming {self.worker.queue} on {redacted(self.broker.amqp_url)}; "
            f"state in {self.part.store.path}"
        )

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        self.part.close()

    @property
    def essential_tasks(self) -> Sequence[asyncio.Task[Any]]:
        return [] if self.worker is None else self.worker.essential_tasks


@dataclass
class SchedulerPart:
    """The scheduler: its order queue and its tick loop."""

    scheduler: Scheduler
    broker: BrokerSettings
    name: str = "scheduler"

    async def start(self) -> str:
        trust, signer = await _self_check(self.broker, self.name)
        await self.scheduler.start(self.broker, trust=trust, signer=signer)
        queue = self.broker.topology().service_queue(self.scheduler.name)
        jobs = len(await self.scheduler.jobs())
        return (
            f"consuming {queue} on {redacted(self.broker.amqp_url)}; {jobs} jobs; "
            f"state in {self.scheduler.store.path}"
        )

    async def stop(self) -> None:
        await self.scheduler.stop()
        self.scheduler.store.close()

    @property
    def essential_tasks(self) -> Sequence[asyncio.Task[Any]]:
        return self.scheduler.essential_tasks


@dataclass
class EdgePart:
    """The HTTP edge, served by uvicorn inside this process."""

    server: uvicorn.Server
    name: str = "edge"
    task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.task = asyncio.create_task(self.server.serve(), name="edge")
        while not self.server.started:
            if self.task.done():
                raise StartupFailed(f"edge: did not start: {_failure(self.task)}")
            await asyncio.sleep(0.05)
        config = self.server.config
        return f"http://{config.host}:{config.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception, SystemExit):
                await self.task

    @property
    def essential_tasks(self) -> Sequence[asyncio.Task[Any]]:
        return [] if self.task is None else [self.task]


def _run_all(args: argparse.Namespace) -> int:
    broker, settings = _settings()
    parts: list[Running] = []
    if not args.no_edge:
        parts.append(_edge(broker))
    parts += [ServicePart(build(name, settings), broker) for name in SERVICES]
    parts.append(SchedulerPart(build_scheduler(settings), broker))
    return _serve(parts)


def _run_worker(args: argparse.Namespace) -> int:
    broker, settings = _settings()
    return _serve([ServicePart(build(args.service, settings), broker)])


def _run_scheduler(_args: argparse.Namespace) -> int:
    broker, settings = _settings()
    return _serve([SchedulerPart(build_scheduler(settings), broker)])


def _settings() -> tuple[BrokerSettings, WorkerSettings]:
    configure_logging()
    return BrokerSettings(), WorkerSettings()


def _edge(broker: BrokerSettings) -> EdgePart:
    """The edge as ``baton edge`` would serve it, trusting the dev key by default."""
    # The edge is optional here: workers never import it, and a deployment
    # without the edge package still runs every service.
    if importlib.util.find_spec("edge_api.app") is None:
        raise SystemExit("baton run: the edge is not installed; use --no-edge")
    from baton.edge_commands import announce_dev_key, edge_settings
    from edge_api.app import create_app
    from edge_api.dev_issuer import DevIssuer

    issuer = DevIssuer.from_environment()
    settings = edge_settings(issuer)
    if settings is None:
        raise SystemExit("baton run: fix the BATON_EDGE_* settings or pass --no-edge")
    try:
        app = create_app(settings, broker)
    except (OSError, ValueError, TrustConfigError) as exc:
        raise SystemExit(f"baton run: the edge cannot start: {exc}") from None
    announce_dev_key(issuer)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None
    )
    return EdgePart(QuietServer(config))


def _serve(parts: list[Running]) -> int:
    try:
        return asyncio.run(run_parts(parts))
    except StartupFailed as exc:
        print(f"baton: {exc}", file=sys.stderr, flush=True)
        return 1


async def run_parts(parts: list[Running]) -> int:
    """Start `parts` in order and run until a signal, or until one stops working.

    Returns the exit code: 0 after a stop signal, 1 when an essential task of
    a part ended on its own.
    """
    stopping = asyncio.Event()
    started: list[Running] = []
    with _stop_on_signals(stopping):
        try:
            for part in parts:
                where = await _start(part)
                started.append(part)
                print(f"{part.name}: {where}", flush=True)
            print("baton: running; Ctrl-C stops", flush=True)
            failed = await _until_stopped(stopping, started)
        finally:
            print("baton: stopping", flush=True)
            for part in reversed(started):
                await part.stop()
    print("baton: stopped", flush=True)
    return 1 if failed else 0


async def _start(part: Running) -> str:
    try:
        return await part.start()
    except BrokerUnavailable as exc:
        raise StartupFailed(f"{part.name}: cannot reach the broker: {exc}") from None


async def _until_stopped(stopping: asyncio.Event, parts: list[Running]) -> bool:
    """Wait for a stop signal; True when an essential task ended on its own instead.

    A worker whose broker link gave up, or a scheduler whose tick loop died,
    would otherwise sit idle in a process that looks alive: exiting non-zero
    lets a supervisor restart it.
    """
    watched = [task for part in parts for task in part.essential_tasks]
    waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([waiter, *watched], return_when="FIRST_COMPLETED")
    waiter.cancel()
    ended = [task for task in watched if task in done]
    for task in ended:
        logger.error("%s ended on its own: %s", task.get_name(), _failure(task))
    return bool(ended)


@contextlib.contextmanager
def _stop_on_signals(stopping: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _self_check(
    broker: BrokerSettings, service: str
) -> tuple[TrustPolicy | None, Signer | None]:
    """The trust policy and signer the settings ask for, after the self-check.

    The check reads the broker account's rights over HTTP when
    ``BATON_MANAGEMENT_URL`` is set, so it runs in a thread.
    """
    try:
        return await asyncio.to_thread(verify_startup, broker, service, _declarations())
    except TrustConfigError as exc:
        raise StartupFailed(str(exc)) from None


@functools.cache
def _declarations() -> tuple[ServiceDeclaration, ...]:
    """Every declaration of the reference deployment, as ``baton provision`` uses."""
    return tuple(reference_declarations())


def _failure(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "exited" if exc is None else f"{type(exc).__name__}: {exc}"


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: this process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
