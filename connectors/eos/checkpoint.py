"""One commit cycle: completions collected since the last commit, written atomically with the
input offsets of their partitions (after Quix Streams' ``Checkpoint``).

A checkpoint is *open* while completions are added, then *committing* from ``start`` until
``finish`` returns True — possibly several loop turns later, when a commit timed out during a
broker failover and librdkafka is still completing it. Only then are the offsets applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from connectors.eos.partition import Assignment, Phase
from connectors.eos.producer import RecordRefused, TransactionalProducer
from connectors.eos.records import TP, Completion, OutputRecord

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """The completions (and side records, e.g. status events) of one transaction."""

    completions: list[Completion] = field(default_factory=list)
    side_records: list[OutputRecord] = field(default_factory=list)
    # Set by ``start``: what the transaction commits per partition (offset, generation).
    offsets: dict[TP, tuple[int, int]] = field(default_factory=dict)
    # commit_transaction timed out at least once: if it then fails, whether it landed is not
    # known (librdkafka: "EndTxn(commit) may have succeeded").
    commit_timed_out: bool = False

    def add(self, completion: Completion) -> None:
        self.completions.append(completion)

    def __bool__(self) -> bool:
        return bool(self.completions or self.side_records)

    def records(self) -> tuple[list[OutputRecord], list[int]]:
        """Every record in order, and for each the index of its completion (-1: side record)."""
        records: list[OutputRecord] = []
        owners: list[int] = []
        for index, completion in enumerate(self.completions):
            records.extend(completion.records)
            owners.extend([index] * len(completion.records))
        records.extend(self.side_records)
        owners.extend([-1] * len(self.side_records))
        return records, owners

    def start(
        self, producer: TransactionalProducer, assignment: Assignment, group_metadata: object
    ) -> bool:
        """Begin the transaction and send everything; ``finish`` commits it. False when there
        was nothing to write (no transaction begun).

        Step 1. Offsets: every partition whose commit point moved, that has a completion here,
                or that was never committed. Re-sending an unchanged offset is harmless and makes
                the group coordinator check our generation for that partition (KIP-447): a zombie
                that lost the partition cannot commit an out-of-order output for it. Each offset
                carries the done offsets above it (``offsets.encode_done``).
        Step 2. Begin, produce every record, send the offsets with the group metadata.
        """
        # Step 1.
        touched = {c.ref.tp for c in self.completions}
        touched.update(t.tp for c in self.completions for t in c.touches)
        offsets: list[TopicPartition] = []
        self.offsets = {}
        for state in assignment:
            if state.phase is not Phase.ACTIVE:
                continue
            moved = state.offsets.committable()
            if moved is None and state.tp not in touched and not state.needs_initial_commit:
                continue
            point = state.offsets.point()
            if point is None:
                continue
            metadata = state.offsets.metadata(point)
            offsets.append(TopicPartition(state.topic, state.partition, point, metadata=metadata))
            self.offsets[state.tp] = (point, state.generation)
        # Step 2.
        records, _ = self.records()
        if not records and not offsets:
            return False
        producer.begin_and_send(records, offsets, group_metadata)
        return True

    def finish(
        self, producer: TransactionalProducer, assignment: Assignment, budget_s: float
    ) -> bool:
        """Step 3. Commit. Step 4. Move every partition's base to what was committed (if it is
        still ours, in the same generation). False: not finished yet, call again."""
        # Step 3.
        if not producer.finish(budget_s):
            self.commit_timed_out = True
            return False
        # Step 4.
        for tp, (offset, generation) in self.offsets.items():
            state = assignment.get(tp)
            if state is not None and state.generation == generation:
                state.offsets.committed(offset)
                state.needs_initial_commit = False
        return True

    def replace_refused(self, error: RecordRefused) -> None:
        """Swap the completions whose records the broker refused for their fallback records (a
        minimal dead letter, say); without a usable fallback, write nothing for them — the
        message is then done with its refusal logged, never retried forever."""
        _, owners = self.records()
        culprits = {owners[i] for i in error.refused if i < len(owners)}
        for index in sorted(culprits):
            if index < 0:
                log.error("a side record was refused (%s): dropped", error)
                self.side_records = []
                continue
            completion = self.completions[index]
            fallback = _call_fallback(completion)
            if fallback is not None and fallback != completion.records:
                log.error(
                    "output of %s[%d]@%d refused by the broker (%s): writing its fallback",
                    completion.ref.topic,
                    completion.ref.partition,
                    completion.ref.offset,
                    error,
                )
                completion.records = fallback
            else:
                log.error(
                    "output of %s[%d]@%d refused by the broker (%s) and no fallback: dropped",
                    completion.ref.topic,
                    completion.ref.partition,
                    completion.ref.offset,
                    error,
                )
                completion.records = []
            completion.fallback = None


def _call_fallback(completion: Completion) -> list[OutputRecord] | None:
    if completion.fallback is None:
        return None
    try:
        return completion.fallback()
    except Exception as exc:  # the handler's bug: write nothing rather than loop forever
        log.error("fallback of %s failed: %s: %s", completion.ref, type(exc).__name__, exc)
        return None
