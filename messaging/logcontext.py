"""Put the message id, correlation id, queue and principal on every log record.

The consumer sets a context variable for each delivery; :class:`MessageContextFilter`
copies it onto the records logged while that delivery is handled, by any module.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from messaging.identity import Principal


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a log line about one delivery should say about it.

    Ids come from whoever published the message: one holding a line break or
    another unprintable character is shown escaped, so that it cannot forge a
    log line or hide part of one.
    """

    message_id: str = "-"
    correlation_id: str = "-"
    queue: str = "-"
    principal: str = "-"

    @classmethod
    def of(
        cls, message_id: str | None, correlation_id: str | None, queue: str
    ) -> MessageContext:
        return cls(loggable(message_id), loggable(correlation_id), queue)

    def acting_for(self, principal: Principal) -> MessageContext:
        # Subjects are checked against a printable pattern before a principal
        # exists, so only the ids need escaping.
        acting = f"{principal.kind.value}:{principal.subject}"
        return MessageContext(self.message_id, self.correlation_id, self.queue, acting)


def loggable(value: str | None) -> str:
    """`value` fit for one log line: escaped when it holds unprintable characters."""
    if not value:
        return "-"
    return value if value.isprintable() else ascii(value)


_EMPTY = MessageContext()
_current: contextvars.ContextVar[MessageContext] = contextvars.ContextVar(
    "baton_message_context", default=_EMPTY
)


@contextmanager
def message_context(context: MessageContext) -> Iterator[None]:
    """Attach `context` to the log records emitted inside the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def bind_message_context(context: MessageContext) -> None:
    """Attach `context` to the log records of the rest of the current task.

    For code that owns its task, as the consumer owns each delivery's: the
    context is discarded with the task, so there is nothing to reset.
    """
    _current.set(context)


class MessageContextFilter(logging.Filter):
    """Adds ``message_id``, ``correlation_id``, ``queue`` and ``principal``."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.message_id = context.message_id
        record.correlation_id = context.correlation_id
        record.queue = context.queue
        record.principal = context.principal
        return True


LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [%(queue)s %(message_id)s "
    "%(principal)s] %(message)s"
)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr with the message context on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(MessageContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # At DEBUG the AMQP client logs every frame it sends, bodies and identity
    # headers included: never let it below INFO.
    quiet = max(root.getEffectiveLevel(), logging.INFO)
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(quiet)
