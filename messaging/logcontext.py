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


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a log line about one delivery should say about it."""

    message_id: str = "-"
    correlation_id: str = "-"
    queue: str = "-"
    principal: str = "-"


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
