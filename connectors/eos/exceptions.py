"""Errors of the exactly-once runtime, sorted by what the caller must do."""

from __future__ import annotations

from f2p_errors import F2PError


class EosError(F2PError):
    """Base of the runtime's errors."""


class TransactionAborted(EosError):
    """The transaction was aborted; its completions may be written again in a new one."""


class ProducerFenced(EosError):
    """The producer hit a fatal error (fenced by a newer instance, or broken): replace it, then
    rewind every partition to its committed offsets (the last transaction's fate is unknown)."""


class ProducerWedged(ProducerFenced):
    """A librdkafka call did not return in time; its producer is abandoned and replaced."""


class ConsumerFatal(EosError):
    """The consumer hit a fatal error; librdkafka's rule: replace the instance.

    ``unreleased``: the static member id is still held by a crashed previous incarnation
    (UNRELEASED_INSTANCE_ID): join again shortly, it frees itself at its session timeout.
    """

    def __init__(self, message: str, *, unreleased: bool = False) -> None:
        super().__init__(message)
        self.unreleased = unreleased


class ProcessorFatal(EosError):
    """The processor cannot continue (e.g. its id is in use by another live process)."""
