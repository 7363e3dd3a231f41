"""Errors raised by the ``schemas`` package (codec and registry helpers)."""

from __future__ import annotations

from f2p_errors import ConfigError, F2PError


class SchemaNotRegistered(ConfigError):
    """The record's current schema is not registered under the subject and auto-registration is
    off; run ``f2p schemas register``."""


class SchemaIncompatible(F2PError):
    """The registry refused a schema because it breaks the subject's compatibility level."""


class UndecodableMessage(F2PError):
    """A Kafka message value could not be decoded into a record.

    ``code`` is one of ``EMPTY_MESSAGE``, ``BAD_MAGIC_BYTE``, ``TRUNCATED_MESSAGE``,
    ``UNKNOWN_SCHEMA_ID``, ``SCHEMA_MISMATCH``, ``AVRO_DECODE_ERROR``; ``topic``, ``partition``
    and ``offset`` locate the message (the last two may be None when decoding outside a consumer).
    The message is poison: retrying cannot help, it belongs on the DLQ.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
        schema_id: int | None = None,
    ) -> None:
        where = f"topic={topic} partition={partition} offset={offset}"
        if schema_id is not None:
            where += f" schema_id={schema_id}"
        super().__init__(f"{code}: {detail} ({where})")
        self.code = code
        self.detail = detail
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.schema_id = schema_id
