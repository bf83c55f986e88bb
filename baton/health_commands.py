"""``baton health <service>``: is the service's queue being consumed right now?

A worker serves no HTTP, so its container healthcheck asks the broker instead:
the command logs in with the process's own account (``AMQP_URL``), declares the
service's work queue passively (which needs no permission and changes nothing)
and reads how many consumers it has. Healthy means at least one, and with several
replicas that means the service is served, not that this replica is. Exit status:
0 healthy, 1 no consumer or no such queue, 2 the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aio_pika
import aiormq

from messaging.connection import CONNECTION_ERRORS, redacted
from messaging.settings import BrokerSettings

CONNECT_TIMEOUT = 5.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "health", help="exit 0 when a service's queue has a consumer (healthcheck)"
    )
    parser.add_argument("service", help="the service whose work queue is checked")
    parser.set_defaults(run=run_health)


def run_health(args: argparse.Namespace) -> int:
    settings = BrokerSettings()
    queue = settings.topology().service_queue(args.service)
    try:
        consumers = asyncio.run(consumer_count(settings, queue))
    except aiormq.exceptions.ChannelNotFoundEntity:
        print(f"baton health: queue {queue} does not exist", file=sys.stderr)
        return 1
    except CONNECTION_ERRORS as exc:
        where = redacted(settings.amqp_url)
        print(f"baton health: cannot reach {where}: {exc}", file=sys.stderr)
        return 2
    if consumers == 0:
        print(f"baton health: nobody consumes {queue}", file=sys.stderr)
        return 1
    print(f"{queue}: {consumers} consumer(s)")
    return 0


async def consumer_count(settings: BrokerSettings, queue: str) -> int:
    connection = await aio_pika.connect(
        settings.amqp_url.get_secret_value(), timeout=CONNECT_TIMEOUT
    )
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0
    finally:
        await connection.close()
