"""The worker's message consumer: Celery's own, except that nothing undecodable is dropped."""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_logger
from celery.worker.consumer import Consumer

logger = get_logger(__name__)


class VotesConsumer(Consumer):
    """Celery acknowledges a message it cannot decode (non-JSON bytes, a content type it does
    not accept) so that it cannot loop, which also throws it away. Rejecting it without
    requeue ends the loop the same way and keeps it: RabbitMQ dead-letters it to votes.dead.
    """

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error(
            "undecodable message (%s, content type %r): to votes.dead",
            type(exc).__name__,
            message.content_type,
        )
        message.reject_log_error(logger, self.connection_errors)  # type: ignore[attr-defined]
