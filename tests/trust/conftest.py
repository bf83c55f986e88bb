"""A deployment of its own for each test: vhost, accounts and keys, made for real.

The fixture provisions a random vhost and one broker account per test service by
running ``baton provision`` against the management API, makes each service's
signing key with ``baton keys generate``, and removes the accounts and the vhost
afterwards, also when the test fails. ``guest`` gets full rights in the vhost only
so that the test can look into queues; no service under test runs as guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import pytest
import pytest_asyncio

from baton.cli import main as baton
from baton.provision_commands import load_declarations
from messaging.connection import Link
from messaging.consumer import Consumer
from messaging.declaration import ServiceDeclaration
from messaging.errors import TrustConfigError
from messaging.handlers import Context
from messaging.identity import Principal, encode_principal
from messaging.provision import Management
from messaging.publisher import Publisher
from messaging.selfcheck import verify_startup
from messaging.settings import BrokerSettings
from messaging.signing import Destination, KeyRing, Signer, SigningKey
from messaging.topology import Topology
from messaging.trust import Accounts
from tests.trust.services import PLACE, Order, declarations

BODY = json.dumps({"item": "book"}).encode()


def alice(*roles: str) -> Principal:
    return Principal.user("alice", roles or ("buyer",), entered_by="edge")


def signed(
    key: SigningKey,
    principal: Principal,
    destination: Destination,
    message_id: str,
    body: bytes = BODY,
    *,
    introduces_users: bool = True,
    issued: float | None = None,
    reply_to: str = "",
) -> dict[str, Any]:
    """Identity headers plus the signature `key` makes for them."""
    clock = (lambda: issued) if issued is not None else time.time
    # The signer is told whatever it needs: tests play hostile signers too.
    signer = Signer(
        key,
        introduces_users=introduces_users,
        roles=principal.roles,
        ttl=60,
        clock=clock,
    )
    headers: dict[str, Any] = dict(encode_principal(principal))
    # publish_as sends the message id as the correlation id, as Baton does.
    signature = signer.sign(
        destination,
        message_id,
        body,
        principal,
        correlation_id=message_id,
        reply_to=reply_to,
    )
    headers.update(signature)
    return headers


def to_core(deployment: Deployment, message_type: str = PLACE) -> Destination:
    return Destination(f"{deployment.prefix}.commands", message_type, message_type)


@dataclass
class Seen:
    """Every handler call, as (service, message id, principal, payload)."""

    calls: list[tuple[str, str, Principal, Order]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, service: str) -> list[tuple[str, str, Principal, Order]]:
        return [call for call in self.calls if call[0] == service]

    async def wait_for(self, service: str, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.of(service)) < count:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Deployment:
    """One provisioned vhost: its accounts, passwords, keys and running parts."""

    amqp_url: str
    vhost: str
    prefix: str
    accounts: Accounts
    passwords: dict[str, str]
    key_dir: Path
    keyring: Path
    management: str
    target: str = "tests.trust.services:DECLARATIONS"
    declared: list[ServiceDeclaration] = field(default_factory=list)
    seen: Seen = field(default_factory=Seen)
    consumers: list[Consumer] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    connections: list[aio_pika.abc.AbstractConnection] = field(default_factory=list)

    def url(self, service: str | None) -> str:
        """The AMQP URL of a service's account (guest's when `service` is None)."""
        parts = urlsplit(self.amqp_url)
        if service is None:
            user, password = parts.username or "guest", parts.password or "guest"
        else:
            user = self.accounts.of(service)
            password = self.passwords[user]
        host = f"{parts.hostname}:{parts.port or 5672}"
        vhost = quote(self.vhost, safe="")
        return f"amqp://{quote(user)}:{quote(password)}@{host}/{vhost}"

    def key(self, service: str) -> SigningKey:
        return SigningKey.load(self.key_file(service))

    def key_file(self, service: str) -> Path:
        (path,) = self.key_dir.glob(f"{service}-*.key")
        return path

    def ring(self) -> KeyRing:
        return KeyRing.load(self.keyring)

    @property
    def topology(self) -> Topology:
        return self.settings("edge").topology()

    def settings(self, service: str, **overrides: Any) -> BrokerSettings:
        values: dict[str, Any] = {
            "amqp_url": self.url(service),
            "prefix": self.prefix,
            "retry_delays": (0.1, 0.2),
            "handler_timeout": 2.0,
            "stop_timeout": 5.0,
            "trust_publishers": True,
            "require_signatures": True,
            "account_prefix": self.accounts.prefix,
            "signing_key_file": self.key_file(service),
            "keyring_file": self.keyring,
            "management_url": self.management,
        }
        values.update(overrides)
        return BrokerSettings(**values)

    async def start(self, service: str, **overrides: Any) -> Consumer:
        """Run a service's consumer after its startup self-check."""
        settings = self.settings(service, **overrides)
        declared = declarations(self._record)
        policy, signer = verify_startup(settings, service, declared, vhost=self.vhost)
        (own,) = (d for d in declared if d.name == service)
        consumer = Consumer(
            service, own.handlers, settings, trust=policy, signer=signer
        )
        self.consumers.append(consumer)
        await consumer.start()
        return consumer

    async def publisher(self, service: str) -> Publisher:
        """A signing publisher logged in as `service`, as the edge would use it."""
        settings = self.settings(service)
        _policy, signer = verify_startup(
            settings, service, self.declared, vhost=self.vhost
        )
        link = Link(settings.amqp_url, name=f"test:{service}")
        self.links.append(link)
        await link.start()
        await link.wait_ready(10)
        return Publisher(link, signer=signer)

    async def connect(self, service: str | None) -> aio_pika.abc.AbstractConnection:
        """A raw aio-pika connection logged in as `service` (guest when None)."""
        connection = await aio_pika.connect(self.url(service))
        self.connections.append(connection)
        return connection

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        for link in self.links:
            await link.stop()
        for connection in self.connections:
            await connection.close()

    async def _record(self, service: str, context: Context, payload: Order) -> None:
        self.seen.calls.append(
            (service, context.message_id, context.principal, payload)
        )
        self.seen.changed.set()
        if service == "core" and payload.item.startswith("forward"):
            await context.publish_event("order.placed", payload)


def provision_args(deployment: Deployment, *options: str) -> list[str]:
    """``baton provision`` over this deployment's declarations, vhost and names."""
    return [
        "provision",
        *options,
        "--declarations",
        deployment.target,
        "--vhost",
        deployment.vhost,
        "--prefix",
        deployment.prefix,
        "--account-prefix",
        deployment.accounts.prefix,
    ]


def provision(deployment: Deployment, passwords_dir: Path) -> int:
    return baton(provision_args(deployment, "--passwords-dir", str(passwords_dir)))


@pytest.fixture
def management(management_url: str) -> Iterator[Management]:
    with Management(management_url) as client:
        try:
            client.get("/api/overview")
        except TrustConfigError as exc:
            pytest.skip(
                f"the management API is not reachable ({exc}); enable it with "
                "`rabbitmq-plugins enable rabbitmq_management`"
            )
        yield client


@contextlib.asynccontextmanager
async def provisioned(
    amqp_url: str,
    management_url: str,
    prefix: str,
    management: Management,
    tmp_path: Path,
    target: str,
) -> AsyncIterator[Deployment]:
    """A vhost with an account and a signing key per declared service, then none."""
    declared = load_declarations(target)
    accounts = Accounts(f"{prefix}-")
    users = [accounts.of(d.name) for d in declared]
    vhost = f"baton-test-{secrets.token_hex(4)}"
    passwords_dir = tmp_path / "passwords"
    passwords_dir.mkdir()
    passwords = {user: secrets.token_urlsafe(18) for user in users}
    for user, password in passwords.items():
        (passwords_dir / user).write_text(password)
    deployment = Deployment(
        amqp_url=amqp_url,
        vhost=vhost,
        prefix=prefix,
        accounts=accounts,
        passwords=passwords,
        key_dir=tmp_path / "keys",
        keyring=tmp_path / "keyring.json",
        management=management_url,
        target=target,
        declared=declared,
    )
    try:
        assert provision(deployment, passwords_dir) == 0
        guest = urlsplit(amqp_url).username or "guest"
        management.put(
            f"/api/permissions/{quote(vhost, safe='')}/{quote(guest)}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        for declaration in declared:
            assert (
                baton(["keys", "generate", declaration.name, *_key_paths(deployment)])
                == 0
            )
        yield deployment
    finally:
        await deployment.close()
        management.remove(vhost, users)


def _key_paths(deployment: Deployment) -> list[str]:
    return ["--dir", str(deployment.key_dir), "--keyring", str(deployment.keyring)]


@pytest_asyncio.fixture
async def deployment(
    amqp_url: str,
    management_url: str,
    prefix: str,
    management: Management,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Deployment]:
    """The test services of ``tests/trust/services.py``, provisioned."""
    monkeypatch.setenv("BATON_MANAGEMENT_URL", management_url)
    target = "tests.trust.services:DECLARATIONS"
    async with provisioned(
        amqp_url, management_url, prefix, management, tmp_path, target
    ) as made:
        yield made


@pytest_asyncio.fixture
async def reference_deployment(
    amqp_url: str,
    management_url: str,
    prefix: str,
    management: Management,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Deployment]:
    """The reference system (edge, users, core, notifications, scheduler)."""
    monkeypatch.setenv("BATON_MANAGEMENT_URL", management_url)
    target = "baton.provision_commands:reference_declarations"
    async with provisioned(
        amqp_url, management_url, prefix, management, tmp_path, target
    ) as made:
        yield made


async def started(deployment: Deployment, services: Sequence[str]) -> None:
    for service in services:
        await deployment.start(service)


async def publish_as(
    deployment: Deployment,
    service: str,
    routing_key: str,
    *,
    body: bytes,
    headers: dict[str, Any],
    message_id: str,
    exchange: str | None = None,
    message_type: str | None = None,
    user_id: str | None = None,
    reply_to: str | None = None,
) -> None:
    """Publish exactly these bytes and headers, logged in as `service`."""
    connection = await deployment.connect(service)
    channel = await connection.channel(publisher_confirms=True)
    try:
        target_name = (
            exchange if exchange is not None else f"{deployment.prefix}.commands"
        )
        target = await channel.get_exchange(target_name, ensure=False)
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message_id,
            type=message_type or routing_key,
            user_id=user_id if user_id is not None else deployment.accounts.of(service),
            reply_to=reply_to,
        )
        await target.publish(message, routing_key)
    finally:
        if not channel.is_closed:
            await channel.close()


async def parked(
    deployment: Deployment,
    service: str,
    expect: int,
    *,
    kind: str = "quarantine",
    quiet: float = 0.5,
) -> list[tuple[str, str, str]]:
    """Take what arrives in a service's quarantine (or dead) queue.

    Waits up to 10 s for `expect` messages, then keeps taking for `quiet`
    seconds more, so that a message beyond those expected is returned too and
    "nothing was parked" (`expect` 0) means nothing arrived in that time.
    Returns (message id, failure code, reason) of each, in arrival order.
    """
    connection = await deployment.connect(None)
    channel = await connection.channel()
    name = f"{deployment.prefix}.{service}.{kind}"
    queue = await channel.get_queue(name, ensure=True)
    taken: list[tuple[str, str, str]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    quiet_until: float | None = None
    while loop.time() < (quiet_until or deadline):
        if quiet_until is None and len(taken) >= expect:
            quiet_until = loop.time() + quiet
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        table = message.headers or {}
        taken.append(
            (
                message.message_id or "",
                str(table.get("baton-failure-code")),
                str(table.get("baton-failure-reason")),
            )
        )
    await channel.close()
    return taken
