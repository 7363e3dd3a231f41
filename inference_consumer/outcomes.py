"""Turn a stage's Outcome into the records its transaction writes (on the stage's thread).

Encoding happens here, off the poll thread: the loop only produces bytes. Every completion has a
``fallback`` — a minimal dead letter — that the loop writes instead if the broker refuses the
records for good, so no output can make a message impossible to finish. Encoding needs the
schema registry; when it fails the request goes to the retry topic (raw bytes, no registry
needed) with its attempt count unchanged: a registry outage delays requests, it loses none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from connectors.dead_letters import build_dead_letter
from connectors.eos.records import Completion, OutputRecord
from connectors.settings import TopicNames
from inference_consumer.headers import ATTEMPT_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER
from inference_consumer.work import Outcome, OutcomeKind, WorkItem
from schemas.codec import AvroCodec
from schemas.control_records import RequestState, RequestStatus

log = logging.getLogger(__name__)


class OutcomeWriter:
    """Encodes outcomes for one worker (thread-safe: the codec caches schemas under a lock)."""

    def __init__(
        self,
        topics: TopicNames,
        codec: AvroCodec,
        *,
        lane_topics: dict[str, str],
        source: str = "worker",
        status_events: bool = True,
        retry_delay_on_encode_failure_s: float = 30.0,
    ) -> None:
        self.topics = topics
        self.codec = codec
        self.source = source
        # A final RequestStatus with every result (and RUNNING events, see ``running``).
        self.status_events = status_events
        # lane name -> its topic, for the origin header of retries.
        self.lane_topics = lane_topics
        self.retry_delay_on_encode_failure_s = retry_delay_on_encode_failure_s

    def completion(self, outcome: Outcome) -> Completion:
        """The completion of ``outcome``'s message; never raises."""
        item = outcome.item
        try:
            records = self._records(outcome)
        except Exception as exc:
            log.warning(
                "cannot encode the %s outcome (%s: %s): handing it to the retry topic",
                outcome.kind.value,
                type(exc).__name__,
                str(exc)[:300],
                extra=item.where(),
            )
            records = [self._retry_record(item, item.attempt, self.retry_delay_on_encode_failure_s)]
        return Completion(
            item.ref, records, fallback=lambda: self._fallback(item, outcome), context=outcome
        )

    def _records(self, outcome: Outcome) -> list[OutputRecord]:
        item = outcome.item
        if outcome.kind is OutcomeKind.RESULT:
            assert outcome.result is not None
            result = outcome.result
            value = self.codec.encode(self.topics.results, result)
            records = [OutputRecord(self.topics.results, value, key=result.request_id.encode())]
            if self.status_events:
                error = result.error
                records.append(
                    self.status(
                        item,
                        RequestState(result.status.value),
                        reason=error.code if error else None,
                        detail=error.message[:500] if error else None,
                    )
                )
            return records
        if outcome.kind is OutcomeKind.DEAD_LETTER:
            assert outcome.dead_letter is not None
            return [
                self._dead_letter_record(
                    item, self.codec.encode(self.topics.dlq, outcome.dead_letter)
                )
            ]
        return [
            self._retry_record(
                item, outcome.next_attempt or item.attempt + 1, outcome.retry_delay_s
            )
        ]

    def status(
        self,
        item: WorkItem,
        state: RequestState,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> OutputRecord:
        """A RequestStatus event for ``item`` (whose identity is validated)."""
        request = item.request
        assert request is not None and item.request_id is not None
        status = RequestStatus(
            request_id=item.request_id,
            status=state,
            at=datetime.now(UTC),
            source=self.source,
            tenant_id=request.tenant_id,
            lane=item.lane,
            reason=reason,
            detail=detail,
            trace_context=request.trace_context,
        )
        return OutputRecord(
            self.topics.status, self.codec.encode(self.topics.status, status), key=status.key
        )

    def _dead_letter_record(self, item: WorkItem, value: bytes) -> OutputRecord:
        # Keyed by the request_id when the request decoded, else by where it came from: the key
        # of the original is untrusted (and possibly huge).
        key = item.request_id or f"{item.topic}/{item.partition}/{item.offset}"
        return OutputRecord(self.topics.dlq, value, key=key.encode())

    def _retry_record(self, item: WorkItem, attempt: int, delay_s: float) -> OutputRecord:
        not_before_ms = int((time.time() + delay_s) * 1000)
        origin = self.lane_topics.get(item.lane, item.topic)
        headers = [
            (ATTEMPT_HEADER, str(attempt).encode()),
            (NOT_BEFORE_HEADER, str(not_before_ms).encode()),
            (ORIGIN_HEADER, origin.encode()),
        ]
        key = item.request_id.encode() if item.request_id else None
        return OutputRecord(self.topics.retry, item.value, key=key, headers=headers)

    def _fallback(self, item: WorkItem, outcome: Outcome) -> list[OutputRecord] | None:
        """A minimal dead letter (coordinates, sizes, digests): what is written if the broker
        refuses the outcome's records for good."""
        refused = f"the broker refused the {outcome.kind.value} record(s) of this message"
        code, message = "OUTPUT_REFUSED", refused
        if outcome.dead_letter is not None:  # the letter was refused: keep why it was one
            original = outcome.dead_letter
            code, message = original.error_code, f"{refused}; {original.error_message}"
        try:
            letter = build_dead_letter(item, code, message, minimal=True)
            return [self._dead_letter_record(item, self.codec.encode(self.topics.dlq, letter))]
        except Exception as exc:  # the registry is down: nothing better than writing nothing
            log.warning("no fallback dead letter: %s", str(exc)[:300], extra=item.where())
            return None


def emitter(
    writer: OutcomeWriter, complete: Callable[[Completion], None]
) -> Callable[[Outcome], None]:
    """The stages' ``emit``: encode on the calling thread, hand the completion to the loop."""

    def emit(outcome: Outcome) -> None:
        complete(writer.completion(outcome))

    return emit
