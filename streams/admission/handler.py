"""Admission's side of the exactly-once loop: untrusted ingress in, one outcome per request_id out.

Two steps, each one transaction with its input offsets (connectors/eos):

* **ingress** (``f2p.requests.*``, any key, any partitioner): bounded checks, decode, identity.
  A message without a valid identity is dead-lettered (never deduplicated: it has none). A valid
  one is re-keyed by its request_id into the repartition topic, partition chosen by the
  project's partitioner — or, when this instance already owns that partition (publishers that
  hash the request_id with murmur2 into equally many partitions, like the SDK), admitted at once:
  one hop instead of two, with the repartition partition's commit point in the transaction so a
  member that lost it cannot commit (KIP-447). The dedupe entry is added before the transaction
  commits; if the loop discards the completion instead (its ingress partition revoked while the
  commit failed), it rewinds that repartition partition, whose store is then restored from the
  changelog — an entry left behind would answer the request DUPLICATE when it comes back.
* **repartition**: the request_id's partition owns its dedupe state (``dedupe.py``). A request_id
  seen within the horizon gets a DUPLICATE status event and nothing else. A new one is answered
  by admission (REJECTED: invalid or over a rejecting quota; EXPIRED: deadline passed while
  queued; CANCELLED: a cancel arrived first) or admitted to a lane (interactive, batch, or
  over-quota by the tenant's GPU-second budget, ``quotas.py``) — with its status event and its
  dedupe entry in the same transaction.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import SpanKind

from connectors import tracing
from connectors.control import CancellationWatch
from connectors.dead_letters import ClaimCheck, build_dead_letter
from connectors.eos.loop import EosLoop
from connectors.eos.partition import Phase
from connectors.eos.records import TP, Completion, MessageRef, OutputRecord, Touched
from connectors.headers import BadHeader, check_headers, first, int_header
from connectors.partitioner import partition_for
from connectors.settings import Settings
from f2p_errors import InvalidInput
from schemas.codec import AvroCodec, UndecodableMessage
from schemas.control_records import IngressRef, RequestState, RequestStatus
from schemas.records import (
    DeadLetter,
    GenerationRequest,
    GenerationResult,
    Lane,
    ModelRef,
    ResultError,
    ResultStatus,
    StageTimings,
)
from schemas.validation import RequestLimits, validate_identity, validate_request
from streams.admission.config import AdmissionConfig
from streams.admission.dedupe import PartitionStore, Seen, StoreRestore, encode_entry
from streams.admission.metrics import AdmissionMetrics
from streams.admission.quotas import QuotaPolicy, TokenBuckets

log = logging.getLogger(__name__)

# Headers admission writes on the repartition topic (only admission writes it).
INGRESS_HEADER = "f2p-ingress"  # "<topic>/<partition>/<offset>" of the ingress message
INGRESS_MS_HEADER = "f2p-ingress-ms"  # its Kafka timestamp: the admission hop starts there
# ... and on the lanes.
ADMITTED_MS_HEADER = "f2p-admitted-ms"

_OUTCOME_STATE = {
    Seen.REJECTED: (RequestState.REJECTED, ResultStatus.REJECTED),
    Seen.EXPIRED: (RequestState.EXPIRED, ResultStatus.EXPIRED),
    Seen.CANCELLED: (RequestState.CANCELLED, ResultStatus.CANCELLED),
}
_REGISTRY_RETRY_S = (0.5, 1, 2, 5, 10, 30)


@dataclass
class IngressMessage:
    """A message being admitted (also a dead letter's ``Source``)."""

    ref: MessageRef
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int
    attempt: int = 1
    request: GenerationRequest | None = None
    request_id: str | None = None
    retries: int = field(default=0)
    # The "admission" span of this message's trace (tracing on), ended when committed.
    span: Any = None

    @property
    def topic(self) -> str:
        return self.ref.topic

    @property
    def partition(self) -> int:
        return self.ref.partition

    @property
    def offset(self) -> int:
        return self.ref.offset

    def where(self) -> dict[str, object]:
        context: dict[str, object] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }
        if self.request_id is not None:
            context["request_id"] = self.request_id
        return context


class AdmissionHandler:
    """Implements ``connectors.eos.loop.Handler`` for admission (synchronous: every message is
    completed during ``handle``, except while the schema registry is unreachable)."""

    def __init__(
        self,
        *,
        settings: Settings,
        config: AdmissionConfig,
        codec: AvroCodec,
        policy: QuotaPolicy,
        cancellations: CancellationWatch,
        metrics: AdmissionMetrics,
        partitions: dict[str, int],
        claim_check: ClaimCheck | None = None,
        limits: RequestLimits | None = None,
        clock_ms: Any = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.config = config
        self.codec = codec
        self.policy = policy
        self.cancellations = cancellations
        self.metrics = metrics
        # Partition counts: the repartition topic's is fixed for the instance's life (it routes
        # request_ids to their dedupe state); the lanes' are refreshed (``set_partitions``).
        self.partitions = dict(partitions)
        self.repartition_count = partitions[self.topics.admission_repartition]
        self.claim_check = claim_check
        self.limits = limits or RequestLimits()
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.source = f"admission/{config.instance_id}"
        self.loop: EosLoop | None = None
        self.stores: dict[int, PartitionStore] = {}
        # One bucket per tenant for all the repartition partitions this instance owns, with
        # their share of the tenant's quota (quotas.py: per-partition buckets held 1/N of the
        # burst each, and a tenant at its quota spilled over it by chance).
        self.buckets = TokenBuckets(self.policy, self.repartition_count)
        self._restores: dict[int, StoreRestore] = {}
        self._waiting: list[tuple[float, int, IngressMessage]] = []  # registry down: retry later
        self._seq = itertools.count()
        self._last_sweep = 0.0
        self._tracing = tracing.enabled()

    def set_partitions(self, partitions: dict[str, int]) -> None:
        """Lane partition counts after a raise (the repartition count never changes)."""
        for topic, count in partitions.items():
            if topic != self.topics.admission_repartition:
                self.partitions[topic] = count

    # -- Handler --------------------------------------------------------------------------------

    def handle(self, message: Any, ref: MessageRef) -> None:
        _, timestamp_ms = message.timestamp()
        item = IngressMessage(
            ref=ref,
            key=message.key(),
            value=message.value(),
            headers=list(message.headers() or ()),
            timestamp_ms=timestamp_ms if timestamp_ms > 0 else self.clock_ms(),
        )
        self._process(item)

    def _process(self, item: IngressMessage) -> None:
        assert self.loop is not None
        if item.topic == self.topics.admission_repartition:
            completion = self._from_repartition(item)
        else:
            completion = self._from_ingress(item)
        if completion is not None:
            self.loop.complete(completion)

    def failed(self, message: Any, ref: MessageRef, error: BaseException) -> Completion:
        item = IngressMessage(ref, message.key(), message.value(), [], self.clock_ms())
        return self._dead_letter(item, "ADMISSION_ERROR", f"{type(error).__name__}: {error}")

    def forget(self, tps: list[TP]) -> None:
        for topic, partition in tps:
            if topic == self.topics.admission_repartition:
                self.stores.pop(partition, None)
                if self.stores:
                    self.buckets.shares = self.repartition_count / len(self.stores)
                self._restores.pop(partition, None)
        gone = set(tps)
        self._waiting = [w for w in self._waiting if w[2].ref.tp not in gone]
        heapq.heapify(self._waiting)

    def committed(self, completions: list[Completion]) -> None:
        now_ms = self.clock_ms()
        for completion in completions:
            outcome, ingress_ms, span = completion.context or (None, None, None)
            if outcome is not None:
                self.metrics.requests.labels(outcome=outcome).inc()
            if ingress_ms is not None:
                self.metrics.hop_seconds.observe(max(0.0, (now_ms - ingress_ms) / 1000))
            if span is not None:
                span.set_attribute("outcome", outcome or "")
                span.end()

    def tick(self) -> None:
        now = time.monotonic()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, item = heapq.heappop(self._waiting)
            self._process(item)
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._sweep()
        self.metrics.dedupe_entries.set(sum(len(s) for s in self.stores.values()))

    def saturated(self) -> bool:
        return False

    def parked(self) -> int:
        return len(self._waiting)

    def last_progress(self) -> float:
        return time.monotonic()  # synchronous: waiting work is the registry's (see health)

    def finishing(self) -> bool:
        # Admission's completions and its messages are equally urgent: it waits in the poll.
        return False

    def ready(self, tp: TP) -> bool:
        """A repartition partition is ready once its dedupe state is restored."""
        topic, partition = tp
        if topic != self.topics.admission_repartition or partition in self.stores:
            return True
        restore = self._restores.get(partition)
        if restore is None:
            self._restores[partition] = StoreRestore(
                self.settings,
                self.topics.admission_dedupe,
                partition,
                int(self.config.dedupe_horizon_s * 1000),
            )
            return False
        if not restore.done:
            return False
        del self._restores[partition]
        if restore.error is not None:
            log.warning(
                "dedupe restore of partition %d failed (retrying): %s", partition, restore.error
            )
            return False
        self.stores[partition] = restore.store
        self.buckets.shares = self.repartition_count / len(self.stores)
        self.metrics.restore_seconds.observe(restore.seconds)
        log.info(
            "dedupe state restored",
            extra={
                "partition": partition,
                "entries": restore.loaded,
                "seconds": round(restore.seconds, 2),
            },
        )
        return True

    # -- step 1: ingress --------------------------------------------------------------------------

    def _from_ingress(self, item: IngressMessage) -> Completion | None:
        problem = self._check(item)
        if problem is not None:
            return self._dead_letter(item, *problem)
        request = self._decode(item)
        if request is None:
            return None  # registry unreachable: parked, retried by tick()
        if isinstance(request, Completion):
            return request
        self._start_span(item, request)
        request_id = request.request_id
        partition = partition_for(request_id, self.repartition_count)
        generation = self._owned_generation(partition)
        if generation is not None:
            # Already at its repartition partition, which is ours: admit in this same hop. The
            # completion touches that partition's dedupe state (see Completion.touches).
            records, outcome = self._admit(item, request, partition)
            owned = Touched(self.topics.admission_repartition, partition, generation)
            return Completion(
                item.ref,
                records,
                context=(outcome, item.timestamp_ms, item.span),
                touches=(owned,),
            )
        headers = [
            (INGRESS_HEADER, f"{item.topic}/{item.partition}/{item.offset}".encode()),
            (INGRESS_MS_HEADER, str(item.timestamp_ms).encode()),
            *self._trace_headers(item),
        ]
        record = OutputRecord(
            self.topics.admission_repartition,
            item.value,
            key=request_id.encode(),
            headers=headers,
            partition=partition,
        )
        return Completion(item.ref, [record], context=("repartitioned", None, item.span))

    def _start_span(self, item: IngressMessage, request: GenerationRequest) -> None:
        """The message's "admission" span (tracing on): in the trace its headers or its record
        carry."""
        if self._tracing:
            parent = tracing.extract(item.headers, request.trace_context)
            item.span = tracing.start(
                "admission", parent, kind=SpanKind.CONSUMER, request_id=request.request_id,
                topic=item.topic, partition=item.partition, offset=item.offset,
            )  # fmt: skip

    def _trace_headers(self, item: IngressMessage) -> list[tuple[str, bytes]]:
        return tracing.headers_of(tracing.inject(item.span)) if item.span is not None else []

    def _owned_generation(self, partition: int) -> int | None:
        """The generation of repartition ``partition`` if it is ours and serving, else None."""
        assert self.loop is not None
        state = self.loop.assignment.get((self.topics.admission_repartition, partition))
        if state is None or state.phase is not Phase.ACTIVE or partition not in self.stores:
            return None
        return state.generation

    def _check(self, item: IngressMessage) -> tuple[str, str] | None:
        if not item.value:
            return "EMPTY_MESSAGE", "the message has no value"
        if len(item.value) > self.config.max_message_bytes:
            limit = self.config.max_message_bytes
            return "MESSAGE_TOO_LARGE", f"the value is {len(item.value)} bytes, limit {limit}"
        try:
            check_headers(item.headers)
        except BadHeader as exc:
            return exc.code, str(exc)
        return None

    def _decode(self, item: IngressMessage) -> GenerationRequest | Completion | None:
        """The request with a valid identity; a dead letter's completion; or None when parked
        because the registry is unreachable (nothing is lost: it is retried with back-off)."""
        try:
            request = self.codec.decode(
                item.topic,
                item.value,
                partition=item.partition,
                offset=item.offset,
                expect=GenerationRequest,
            )
        except UndecodableMessage as exc:
            return self._dead_letter(item, exc.code, str(exc))
        except Exception as exc:  # the registry: transient
            delay = _REGISTRY_RETRY_S[min(item.retries, len(_REGISTRY_RETRY_S) - 1)]
            item.retries += 1
            log.warning(
                "cannot decode (registry?), retrying in %.1f s: %s", delay, str(exc)[:300],
                extra=item.where(),
            )  # fmt: skip
            heapq.heappush(self._waiting, (time.monotonic() + delay, next(self._seq), item))
            return None
        assert isinstance(request, GenerationRequest)
        item.request = request
        try:
            validate_identity(request, self.limits)
        except InvalidInput as exc:
            return self._dead_letter(item, exc.code, str(exc))
        item.request_id = request.request_id
        return request

    def _dead_letter(self, item: IngressMessage, code: str, message: str) -> Completion:
        self.metrics.errors.labels(reason=code).inc()
        log.warning("dead letter: %s: %s", code, message[:300], extra=item.where())
        letter = build_dead_letter(item, code, message, claim_check=self.claim_check)
        key = item.request_id or f"{item.topic}/{item.partition}/{item.offset}"

        def minimal() -> list[OutputRecord]:
            refused = f"the broker refused the full dead letter; {message}"
            small = build_dead_letter(item, code, refused, minimal=True)
            return [self._letter_record(small, key)]

        return Completion(
            item.ref,
            [self._letter_record(letter, key)],
            fallback=minimal,
            context=("dead_letter", None, None),
        )

    def _letter_record(self, letter: DeadLetter, key: str) -> OutputRecord:
        return OutputRecord(
            self.topics.dlq, self.codec.encode(self.topics.dlq, letter), key=key.encode()
        )

    # -- step 2: the request_id's own partition -----------------------------------------------

    def _from_repartition(self, item: IngressMessage) -> Completion | None:
        request = self._decode(item)
        if request is None:
            return None
        if isinstance(request, Completion):
            return request  # only admission writes this topic: a bug, or someone else did
        self._start_span(item, request)
        origin = _ingress_of(item)
        records, outcome = self._admit(item, request, item.partition, origin)
        ingress_ms = _int_header(item.headers, INGRESS_MS_HEADER)
        return Completion(item.ref, records, context=(outcome, ingress_ms, item.span))

    def _admit(
        self,
        item: IngressMessage,
        request: GenerationRequest,
        partition: int,
        origin: IngressRef | None = None,
    ) -> tuple[list[OutputRecord], str]:
        """The records that answer or admit ``request`` (dedupe partition ``partition``)."""
        store = self.stores[partition]
        request_id = request.request_id
        now_ms = self.clock_ms()
        origin = origin or IngressRef(
            topic=item.topic, partition=item.partition, offset=item.offset
        )
        if store.get(request_id) is not None:
            count = store.duplicate(request_id)
            status = self._status(request, RequestState.DUPLICATE, origin, duplicates=count)
            return [status], "duplicate"
        seen, lane, error = self._decide(request, partition, now_ms)
        store.add(request_id, now_ms, seen)
        records = [
            OutputRecord(
                self.topics.admission_dedupe,
                encode_entry(now_ms, seen),
                key=request_id.encode(),
                partition=partition,
            )
        ]
        if seen is Seen.ACCEPTED:
            assert lane is not None
            topic = self.topics.worker_lanes[lane]
            records.append(
                OutputRecord(
                    topic,
                    item.value,
                    key=request_id.encode(),
                    headers=[
                        (ADMITTED_MS_HEADER, str(now_ms).encode()),
                        *self._trace_headers(item),
                    ],
                    partition=partition_for(request_id, self.partitions[topic]),
                )
            )
            records.append(self._status(request, RequestState.ACCEPTED, origin, lane=lane))
            return records, "overquota" if lane == "overquota" else "accepted"
        assert error is not None
        state, result_status = _OUTCOME_STATE[seen]
        records.append(self._result(request, result_status, error, now_ms))
        records.append(
            self._status(request, state, origin, reason=error.code, detail=error.message[:500])
        )
        return records, seen.name.lower()

    def _decide(
        self, request: GenerationRequest, partition: int, now_ms: int
    ) -> tuple[Seen, str | None, ResultError | None]:
        """Rejected, expired, cancelled, or the lane it goes to."""
        try:
            validate_request(request, self.limits)
        except InvalidInput as exc:
            return Seen.REJECTED, None, ResultError(code=exc.code, message=str(exc)[:1000])
        if request.deadline is not None and request.deadline.timestamp() * 1000 <= now_ms:
            message = "the deadline passed before the request was admitted"
            return Seen.EXPIRED, None, ResultError(code="DEADLINE_EXCEEDED", message=message)
        if self.cancellations.is_cancelled(request.request_id):
            message = "cancelled before it was admitted"
            return Seen.CANCELLED, None, ResultError(code="CANCELLED", message=message)
        lane = "interactive" if request.lane is Lane.INTERACTIVE else "batch"
        cost = self.policy.cost(request.params)
        if self.buckets.admit(request.tenant_id, cost):
            return Seen.ACCEPTED, lane, None
        if self.policy.of(request.tenant_id).over_quota == "reject":
            message = f"tenant {request.tenant_id} is over its GPU-second quota"
            return Seen.REJECTED, None, ResultError(code="QUOTA_EXCEEDED", message=message)
        return Seen.ACCEPTED, "overquota", None

    def _result(
        self, request: GenerationRequest, status: ResultStatus, error: ResultError, now_ms: int
    ) -> OutputRecord:
        completed = datetime.fromtimestamp(now_ms / 1000, UTC)
        total_ms = max(0, int(now_ms - request.submitted_at.timestamp() * 1000))
        result = GenerationResult(
            request_id=request.request_id,
            tenant_id=request.tenant_id,
            status=status,
            worker_id=self.source,
            model=ModelRef(name="admission", revision="-", lora=None),
            submitted_at=request.submitted_at,
            completed_at=completed,
            error=error,
            timings=StageTimings(total_ms=total_ms),
            attributes=request.attributes,
        )
        return OutputRecord(
            self.topics.results,
            self.codec.encode(self.topics.results, result),
            key=request.request_id.encode(),
        )

    def _status(
        self,
        request: GenerationRequest,
        state: RequestState,
        origin: IngressRef,
        *,
        lane: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        duplicates: int = 0,
    ) -> OutputRecord:
        status = RequestStatus(
            request_id=request.request_id,
            status=state,
            at=datetime.now(UTC),
            source=self.source,
            tenant_id=request.tenant_id,
            lane=lane,
            reason=reason,
            detail=detail,
            duplicates=duplicates,
            ingress=origin,
            trace_context=request.trace_context,
        )
        return OutputRecord(
            self.topics.status, self.codec.encode(self.topics.status, status), key=status.key
        )

    # -- the horizon ----------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Tombstone dedupe entries past the horizon (bounded per second)."""
        assert self.loop is not None
        now_ms = self.clock_ms()
        budget = self.config.expiry_per_second
        for partition, store in list(self.stores.items()):
            if budget <= 0:
                break
            for request_id in store.expire(now_ms, budget):
                budget -= 1
                self.loop.side(
                    OutputRecord(
                        self.topics.admission_dedupe,
                        None,
                        key=request_id.encode(),
                        partition=partition,
                    )
                )


def _int_header(headers: list[tuple[str, bytes | None]], name: str) -> int | None:
    try:
        value = int_header(headers, name, low=1, high=10**16, default=0)
    except BadHeader:
        return None
    return value or None


def _ingress_of(item: IngressMessage) -> IngressRef | None:
    raw = first(item.headers, INGRESS_HEADER)
    if raw is None or len(raw) > 300:
        return None
    topic, _, rest = raw.decode("ascii", errors="replace").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if not partition.isdigit() or not rest.isdigit():
        return None
    return IngressRef(topic=topic, partition=int(partition), offset=int(rest))
