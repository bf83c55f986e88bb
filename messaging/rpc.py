"""Request and reply over the broker, for the edge and for service-to-service calls.

A requester owns one exclusive, auto-deleted reply queue bound under its own name
to its service's reply exchange, which no other service may read. A request is a
command with ``reply_to`` set to that name; the handler's return value comes back
through that exchange with ``correlation_id`` equal to the request's message id.
A reply is matched to the one pending request with that id: a reply nobody waits
for (late, or forged) is dropped, never handed to another caller.

Every step is bounded in time. Setting up the reply queue (which a link's
``on_connect`` hook can do ahead of the first request, see :meth:`open`) takes
at most ``setup_timeout``, and sending at most the caller's ``send_timeout``;
either taking longer means the connection went silent, and the link is asked
for a fresh one. The reply takes at most ``timeout``. A connection that dies
under a call, which aiormq reports by failing its pending futures with
``CancelledError``, is :class:`~messaging.errors.BrokerUnavailable` as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pydantic import BaseModel, ValidationError

from messaging import headers as h
from messaging.connection import CONNECTION_ERRORS, Link, cancelled_by_connection
from messaging.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    RemoteError,
    RemoteFailure,
    RemoteNotFound,
    RemoteRefusal,
    RemoteRejection,
    RequestTimeout,
)
from messaging.identity import Principal
from messaging.publisher import Publisher, new_message_id
from messaging.topology import Topology

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


class Requester:
    """Sends requests and waits for their replies on a private reply queue."""

    def __init__(
        self,
        link: Link,
        publisher: Publisher,
        topology: Topology,
        *,
        owner: str,
        setup_timeout: float = 5.0,
    ) -> None:
        self._link = link
        self._publisher = publisher
        self._topology = topology
        self._owner = owner
        self._setup_timeout = setup_timeout
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._opening = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(
        self,
        request_type: str,
        payload: BaseModel,
        *,
        principal: Principal,
        reply_model: type[R],
        timeout: float,
        correlation_id: str | None = None,
        send_timeout: float | None = None,
    ) -> R:
        """Send a request and return the validated reply, or raise why not.

        With `send_timeout` (longer than the publisher's confirm deadline),
        setting up and publishing may take that long; beyond it the connection
        is taken for dead, the link asked for a fresh one, and ConfirmTimeout
        raised. The reply then has `timeout` seconds.
        """
        message_id = new_message_id()
        waiter = asyncio.get_running_loop().create_future()
        self._pending[message_id] = waiter
        try:
            try:
                async with asyncio.timeout(send_timeout):
                    reply_to = await self._reply_queue()
                    await self._publisher.publish(
                        self._topology.commands,
                        request_type,
                        message_type=request_type,
                        body=payload,
                        principal=principal,
                        message_id=message_id,
                        correlation_id=correlation_id,
                        reply_to=reply_to,
                        expiration=timeout,
                    )
            except TimeoutError:
                # Longer than any confirm takes: the connection went silent.
                self._link.mark_lost()
                raise ConfirmTimeout(
                    f"sending {request_type} {message_id} took over {send_timeout}s"
                ) from None
            try:
                reply = await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"no reply to {request_type} {message_id} within {timeout}s"
                ) from None
        finally:
            self._pending.pop(message_id, None)
        return _decode_reply(reply, reply_model, request_type)

    async def close(self) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable("requester closed"))
        channel, self._channel, self._queue = self._channel, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await channel.close()

    async def open(self, connection: AbstractConnection) -> None:
        """Set up a fresh reply queue on `connection` now, not at the first request.

        Meant for a link's ``on_connect`` hook, before the link counts as ready.
        """
        await self._set_up(lambda: connection, fresh=True)

    async def _reply_queue(self) -> str:
        return (await self._set_up(lambda: self._link.connection, fresh=False)).name

    async def _set_up(
        self, connection: Callable[[], AbstractConnection], *, fresh: bool
    ) -> AbstractQueue:
        try:
            async with asyncio.timeout(self._setup_timeout):
                async with self._opening:
                    queue, channel = self._queue, self._channel
                    if fresh or queue is None or channel is None or channel.is_closed:
                        queue = await self._declare(connection())
                    return queue
        except TimeoutError:
            # A broker that cannot open a channel in this time is not there:
            # a fresh connection notices that sooner than the heartbeat would.
            self._link.mark_lost()
            raise BrokerUnavailable(
                f"setting up the reply queue took over {self._setup_timeout}s"
            ) from None
        except asyncio.CancelledError:
            if not cancelled_by_connection():
                raise
            self._link.mark_lost()
            raise BrokerUnavailable("the connection closed while setting up") from None

    async def _declare(self, connection: AbstractConnection) -> AbstractQueue:
        try:
            channel = await connection.channel(publisher_confirms=False)
            queue = await self._topology.declare_reply_queue(
                channel, self._owner, uuid.uuid4().hex[:12]
            )
            await queue.consume(self._on_reply, no_ack=True)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot set up the reply queue: {exc}") from exc
        self._channel, self._queue = channel, queue
        channel.close_callbacks.add(self._on_channel_closed)
        return queue

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiter = self._pending.get(message.correlation_id or "")
        if waiter is None or waiter.done():
            logger.debug("dropped a reply nobody waits for: %s", message.correlation_id)
            return
        waiter.set_result(message)

    def _on_channel_closed(self, *_args: Any) -> None:
        self._queue = None
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable("the reply channel closed"))


# What a callee's error type means for the caller (messaging/errors.py). The
# names are the codes of the callee's refusals and the class names of its
# handler's errors, as the consumer writes them into baton-error-type.
REFUSALS: Final = frozenset({"Forbidden", "ChainTooDeep", "UnprovenPrincipal"})
REJECTIONS: Final = frozenset(
    {
        "MessageRejected",
        "SchemaError",
        "UnknownMessageType",
        "UntrustedPublisher",
        "InvalidSignature",
        "ReplayedMessage",
        "TooManyPublishes",
        "IdentityChanged",
        "Reject",
        "UndeclaredMessage",
        "PublishKeyReused",
        "InvalidReply",
    }
)
NOT_FOUND: Final = "NotFound"


def remote_error(error_type: str, message: str, request_type: str) -> RemoteError:
    """The typed error for a callee's answer `error_type`; unknown types are failures.

    Anything not known to be final is retryable: a callee's crash, its
    timeout, or an error type from a newer callee that this code predates.
    """
    if error_type in REFUSALS:
        return RemoteRefusal(error_type, message, request_type)
    if error_type == NOT_FOUND:
        return RemoteNotFound(error_type, message, request_type)
    if error_type in REJECTIONS:
        return RemoteRejection(error_type, message, request_type)
    return RemoteFailure(error_type, message, request_type)


def _decode_reply(
    message: AbstractIncomingMessage, model: type[R], request_type: str
) -> R:
    error_type = (message.headers or {}).get(h.ERROR_TYPE)
    if error_type is not None:
        try:
            detail = json.loads(message.body)
            text = str(detail.get("message", ""))
        except (ValueError, AttributeError):
            text = message.body[:200].decode("utf-8", "replace")
        raise remote_error(str(error_type)[:64], text, request_type)
    try:
        return model.model_validate_json(message.body)
    except ValidationError as exc:
        raise remote_error(
            "InvalidReply", f"reply does not fit {model.__name__}: {exc}", request_type
        ) from None
