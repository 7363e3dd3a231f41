"""Replay: re-publish past requests as new requests, e.g. to regenerate with a new model.

A replay selects requests from source topics (both lanes by default) by time window
(``offsets_for_times``) and/or explicit offsets per partition, filters them by tenant and by the
status of their result (a join with the results topic), and publishes each as a new request: a
new ``request_id``, ``replay_of`` = the original id, into the target lane, without the original
deadline. Publishing goes through :class:`connectors.publisher.Publisher`, so replayed requests
are validated against today's limits like any other.

Exactly once per original, even across ``kill -9``:

- the selected offset ranges are frozen in the checkpoint when the run starts, so a target lane
  that is also a source never feeds the run its own output;
- after each batch is delivered, the checkpoint records the next source offset per partition
  and the target's end offsets;
- new ids are ``uuid5(REPLAY_NAMESPACE, "<run_id>/<original id>")``; a resumed run reads the
  target from the checkpointed end offsets, collects the keys it already published after its
  last checkpoint and skips them. Should anything still slip through, the duplicate carries the
  same request_id and the workers' dedupe absorbs it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.kafka import located, make_consumer
from connectors.publisher import Publisher, RateLimiter, lane_topic
from connectors.registry import make_registry_client
from connectors.replay_checkpoint import (
    ReplayCheckpoint,
    default_checkpoint_dir,
    partition_key,
    split_partition_key,
)
from connectors.replay_selection import (
    OffsetSpec,
    ReplayError,
    ReplaySelection,
    parse_offsets,
    plan_ranges,
    target_marks,
)
from connectors.results import iter_results
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from f2p_errors import ConfigError, InvalidInput
from schemas.codec import AvroCodec
from schemas.exceptions import UndecodableMessage
from schemas.records import GenerationRequest, Lane, ResultStatus, utc_now

__all__ = [
    "REPLAY_NAMESPACE",
    "OffsetSpec",
    "ReplayError",
    "ReplayReport",
    "ReplaySelection",
    "make_replay_request",
    "parse_offsets",
    "plan_ranges",
    "replay_request_id",
    "run_replay",
]

logger = logging.getLogger(__name__)

#: Namespace of replayed request ids (uuid5); never change it.
REPLAY_NAMESPACE = uuid.UUID("6f1d3c52-1b0e-5a8e-9c39-4f2e6b7a0d11")


def replay_request_id(original_id: str, run_id: str) -> str:
    """The deterministic id of ``original_id`` replayed by run ``run_id``."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{run_id}/{original_id}"))


@dataclasses.dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do).

    ``planned``, ``scanned``, ``matched`` and ``replayed`` count the whole run, across
    interruptions; ``already_replayed`` (requests a resumed run found delivered after the last
    checkpoint), ``skipped`` and ``failed`` count this invocation.
    """

    run_id: str
    checkpoint: Path | None
    dry_run: bool = False
    resumed: bool = False
    planned: int = 0
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    already_replayed: int = 0
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    failed: Counter[str] = dataclasses.field(default_factory=Counter)
    done: bool = False
    was_complete: bool = False  # the checkpoint said done: nothing was read or published
    elapsed_s: float = 0.0


def make_replay_request(original: GenerationRequest, run_id: str, lane: Lane) -> GenerationRequest:
    """The new request for ``original``: new id, ``replay_of``, target lane, no deadline."""
    return dataclasses.replace(
        original,
        request_id=replay_request_id(original.request_id, run_id),
        replay_of=original.request_id,
        lane=lane,
        submitted_at=utc_now(),
        deadline=None,
        trace_context={},
    )


def run_replay(
    settings: Settings,
    selection: ReplaySelection,
    *,
    checkpoint_path: Path | None = None,
    run_id: str | None = None,
    restart: bool = False,
    rate: float | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    checkpoint_interval_s: float = 0.5,
    on_progress: Callable[[ReplayReport], None] | None = None,
    publisher: Publisher | None = None,
) -> ReplayReport:
    """Replay ``selection``; resume from ``checkpoint_path`` if it holds this selection's run.

    Steps: 1. load or create the checkpoint (frozen ranges, run id, target end offsets);
    2. join with the results topic if filtering by result status; 3. on resume, collect the ids
    already published after the last checkpoint; 4. read, filter and publish, checkpointing after
    each delivered batch; 5. mark the checkpoint done. ``dry_run`` publishes nothing and writes
    no checkpoint.
    """
    started = time.monotonic()
    codec = AvroCodec(make_registry_client(settings), auto_register=settings.embedded)
    target = lane_topic(settings, selection.target_lane)
    fingerprint = selection.fingerprint(settings)
    path = None if dry_run else checkpoint_path or default_checkpoint_dir() / f"{fingerprint}.json"
    consumer = make_consumer(settings, f"f2p-replay-{uuid.uuid4().hex[:12]}")
    try:
        # Step 1. Checkpoint.
        state = None if (dry_run or restart or path is None) else ReplayCheckpoint.load(path)
        if state is not None and state.fingerprint != fingerprint:
            raise ConfigError(
                f"checkpoint {path} belongs to another replay selection; "
                "pass another --checkpoint or --restart"
            )
        if state is not None and run_id is not None and state.run_id != run_id:
            raise ConfigError(f"checkpoint {path} is run {state.run_id}, not {run_id}")
        resumed = state is not None
        if state is None:
            ranges = plan_ranges(consumer, selection)
            state = ReplayCheckpoint(
                run_id=run_id or str(uuid.uuid4()),
                fingerprint=fingerprint,
                target_topic=target,
                ranges=ranges,
                next_offsets={k: start for k, (start, _) in ranges.items()},
                target_marks={} if dry_run else target_marks(consumer, target),
            )
            if path is not None:
                state.save(path)
        report = ReplayReport(
            run_id=state.run_id, checkpoint=path, dry_run=dry_run, resumed=resumed,
            planned=state.planned, scanned=state.scanned, matched=state.matched,
            replayed=state.replayed, done=state.done, was_complete=state.done,
        )  # fmt: skip
        if on_progress is not None:
            on_progress(report)
        if state.done:
            report.elapsed_s = time.monotonic() - started
            return report

        # Step 2. Result join.
        statuses: dict[str, ResultStatus] = {}
        if selection.result_statuses:
            for result in iter_results(settings, since=selection.since, codec=codec):
                statuses[result.request_id] = result.status

        # Step 3. Ids published after the last checkpoint by the interrupted run.
        already: set[str] = set()
        if resumed:
            for msg in read_to_end(settings, target, start_offsets=state.target_marks):
                key = msg.key()
                if key is not None:
                    already.add(key.decode(errors="replace"))

        # Step 4. Read, filter, publish.
        owned = publisher is None and not dry_run
        active = None if dry_run else publisher or Publisher(settings, codec=codec)
        loop = _ReplayLoop(
            consumer, codec, selection, state, report, statuses, already, active,
            RateLimiter(rate), path, batch_size, checkpoint_interval_s, on_progress,
        )  # fmt: skip
        try:
            loop.run()
        finally:
            if owned and active is not None:
                active.close()

        # Step 5. Done.
        state.done = report.done = True
        if path is not None:
            state.save(path)
        report.elapsed_s = time.monotonic() - started
        return report
    finally:
        consumer.close()


@dataclasses.dataclass
class _ReplayLoop:
    """Step 4 of ``run_replay``: read the frozen ranges, filter, publish, checkpoint."""

    consumer: Consumer
    codec: AvroCodec
    selection: ReplaySelection
    state: ReplayCheckpoint
    report: ReplayReport
    statuses: Mapping[str, ResultStatus]
    already: set[str]
    publisher: Publisher | None  # None: dry run
    limiter: RateLimiter
    path: Path | None
    batch_size: int
    interval_s: float
    on_progress: Callable[[ReplayReport], None] | None

    def run(self) -> None:
        state = self.state
        remaining = {k for k, (_, end) in state.ranges.items() if state.next_offsets[k] < end}
        self.consumer.assign(
            [TopicPartition(*split_partition_key(k), state.next_offsets[k]) for k in remaining]
        )
        batch: list[Future] = []
        last_checkpoint = time.monotonic()
        while remaining:
            for msg in self.consumer.consume(self.batch_size, 0.2):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise ReplayError(f"reading {msg.topic()}: {error.str()}")
                    continue
                topic, partition, offset = located(msg)
                key = partition_key(topic, partition)
                if key not in remaining or offset >= state.ranges[key][1]:
                    continue
                state.next_offsets[key] = offset + 1
                self.report.scanned += 1
                future = self.replay_one(msg)
                if future is not None:
                    batch.append(future)
                # By count or time, also within a long (rate-limited) consumed batch.
                if len(batch) >= self.batch_size or (
                    time.monotonic() - last_checkpoint >= self.interval_s
                ):
                    self.checkpoint(batch)
                    batch, last_checkpoint = [], time.monotonic()
            remaining -= self._finished(remaining)
            self._progress()
        self.checkpoint(batch)
        self._progress()

    def _finished(self, remaining: set[str]) -> set[str]:
        """Partitions whose position reached the end of their range (also past markers)."""
        done = set()
        for tp in self.consumer.position(
            [TopicPartition(*split_partition_key(k)) for k in remaining]
        ):
            key = partition_key(tp.topic, tp.partition)
            if tp.offset >= self.state.ranges[key][1]:
                self.state.next_offsets[key] = self.state.ranges[key][1]
                done.add(key)
        return done

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)

    def replay_one(self, msg: Message) -> Future | None:
        """Filter one source message and publish its replay; the delivery future or None."""
        report, selection = self.report, self.selection
        if selection.since is not None and msg.timestamp()[1] < selection.since.timestamp() * 1e3:
            report.skipped["outside_window"] += 1
            return None
        try:
            topic, partition, offset = located(msg)
            original = self.codec.decode(
                topic, msg.value(), partition=partition, offset=offset, expect=GenerationRequest
            )
        except UndecodableMessage as exc:
            logger.warning("skipping undecodable request: %s", exc)
            report.skipped["undecodable"] += 1
            return None
        assert isinstance(original, GenerationRequest)
        if selection.tenant is not None and original.tenant_id != selection.tenant:
            report.skipped["tenant"] += 1
            return None
        status = self.statuses.get(original.request_id)
        if selection.result_statuses and status not in selection.result_statuses:
            report.skipped["result_status"] += 1
            return None
        report.matched += 1
        new = make_replay_request(original, self.state.run_id, selection.target_lane)
        if new.request_id in self.already:
            report.already_replayed += 1
            return None
        if self.publisher is None:
            return None
        try:
            prepared = self.publisher.prepare(new)
        except InvalidInput as exc:
            logger.warning("cannot replay %s: %s", original.request_id, exc,
                           extra={"code": exc.code})  # fmt: skip
            report.failed[exc.code] += 1
            return None
        self.limiter.acquire()
        return self.publisher.send(prepared)

    def checkpoint(self, batch: list[Future]) -> None:
        """Record a delivered batch (nothing in a dry run).

        Step 1. Flush the publisher. Step 2. Fail the run if any delivery failed (the checkpoint
        stays where it was; a rerun resumes and skips what was delivered). Step 3. Move the
        target marks past what was delivered: the log is append-only, so whatever this run
        publishes later lands after them (no broker round trip). Step 4. Save next offsets,
        counts and target marks atomically.
        """
        if self.publisher is None:
            return
        state, report = self.state, self.report
        # Step 1.
        left = self.publisher.flush(120.0)
        if left:
            raise ReplayError(f"{left} replayed request(s) not delivered in 120 s; rerun to resume")
        # Step 2.
        errors = [f.exception() for f in batch if f.exception() is not None]
        if errors:
            raise ReplayError(f"{len(errors)} replayed request(s) failed, first: {errors[0]}")
        # Step 3.
        for future in batch:
            delivered = future.result()
            mark = state.target_marks.get(delivered.partition, 0)
            state.target_marks[delivered.partition] = max(mark, delivered.offset + 1)
        # Step 4.
        report.replayed += len(batch)
        state.replayed, state.scanned, state.matched = (
            report.replayed, report.scanned, report.matched
        )  # fmt: skip
        if self.path is not None:
            state.save(self.path)
        self._progress()
