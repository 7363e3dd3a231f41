"""Avro codec in the Confluent wire format, backed by a schema registry.

A message value is ``0x00`` (magic byte), the schema id as a 4-byte big-endian integer, then the
Avro binary body (no container header). Subjects follow TopicNameStrategy (``<topic>-value``).

Writers always write the current ``.avsc`` of the record. Readers take the writer schema by id
from the registry, pick the record type from its full name (``io.f2pstream.v1.GenerationResult``)
and resolve it into the current ``.avsc`` with fastavro, so messages written by any older
version decode into today's dataclasses.

Failures of a message (bad bytes, unknown schema id, ...) raise ``UndecodableMessage`` with a
``code``: the message is poison and belongs on the DLQ. Failures of the registry itself
(unreachable, 5xx) propagate unchanged: they are transient and the message must be retried.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import threading
from collections.abc import Mapping
from typing import Any, TypeVar, overload

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from schemas import catalog
from schemas.exceptions import SchemaIncompatible, SchemaNotRegistered, UndecodableMessage
from schemas.records import RECORD_TYPES, Record
from schemas.topics import subject_for

__all__ = [
    "DEFAULT_COMPATIBILITY",
    "AvroCodec",
    "SchemaIncompatible",
    "SchemaNotRegistered",
    "UndecodableMessage",
    "register_all",
]

logger = logging.getLogger(__name__)

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")

#: Compatibility level of every subject; see docs/SCHEMA_EVOLUTION.md for why.
DEFAULT_COMPATIBILITY = "FULL_TRANSITIVE"

# Registry error codes (Confluent's, which Apicurio's ccompat API also uses).
_SUBJECT_NOT_FOUND = 40401
_SCHEMA_NOT_FOUND = 40403

_ReaderEntry = tuple[type[Record], Any, dict[str, Any] | None]

#: The record type a caller expects from a topic (``decode(..., expect=RequestStatus)``).
Expected = TypeVar("Expected", bound=Record)


def _not_found(exc: SchemaRegistryError) -> bool:
    return exc.http_status_code == 404 or exc.error_code in (_SUBJECT_NOT_FOUND, _SCHEMA_NOT_FOUND)


def _registry_url(registry: SchemaRegistryClient) -> str:
    try:
        return str(registry.config().get("url", "?"))
    except Exception:  # a test double without config()
        return "?"


class AvroCodec:
    """Encode records to and decode them from Confluent-framed Avro.

    ``auto_register=True`` registers the current schema on first use of a subject (the embedded
    stack only), with the subject's compatibility set to ``FULL_TRANSITIVE`` first, so that an
    auto-registered subject is protected like a registered one; otherwise the schema must
    already be registered (``f2p stack up``, ``f2p topics apply`` or ``f2p schemas register``).
    Schema ids are cached per (subject, record) and parsed writer schemas per id, so after the
    first message of each kind no registry call is made. Safe to share between threads: id
    misses are serialised, writer-schema fills are idempotent.
    """

    def __init__(self, registry: SchemaRegistryClient, *, auto_register: bool) -> None:
        self._registry = registry
        self._auto_register = auto_register
        self._ids: dict[tuple[str, str], int] = {}
        self._readers: dict[int, _ReaderEntry] = {}
        # Serialises cache misses of schema ids: one registry round trip per subject, not one
        # per thread that encodes its first message.
        self._miss_lock = threading.Lock()

    # -- encode ----------------------------------------------------------------------------------

    def encode(self, topic: str, record: Record) -> bytes:
        """Serialize ``record`` for ``topic`` with the current schema of its type."""
        name = type(record).__name__
        if catalog.full_name(name) not in RECORD_TYPES:
            raise TypeError(f"cannot encode {type(record).__qualname__}: not a schema record")
        schema_id = self._schema_id(subject_for(topic), name)
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
        fastavro.schemaless_writer(out, catalog.parsed_schema(name), record.to_avro())
        return out.getvalue()

    def _schema_id(self, subject: str, name: str) -> int:
        cached = self._ids.get((subject, name))
        if cached is not None:
            return cached
        with self._miss_lock:
            cached = self._ids.get((subject, name))
            return cached if cached is not None else self._fetch_schema_id(subject, name)

    def _fetch_schema_id(self, subject: str, name: str) -> int:
        schema = Schema(catalog.schema_str(name), "AVRO")
        try:
            if self._auto_register:
                schema_id = self._auto_registered_id(subject, schema)
            else:
                schema_id = self._registry.lookup_schema(subject, schema).schema_id
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise SchemaIncompatible(
                    f"registry refused the current {catalog.full_name(name)} schema for "
                    f"subject {subject!r}: {exc.error_message}"
                ) from exc
            if not self._auto_register and _not_found(exc):
                raise SchemaNotRegistered(
                    f"the current {catalog.full_name(name)} schema is not registered under "
                    f"subject {subject!r} at {_registry_url(self._registry)}; "
                    "run `f2p schemas register` (or enable auto-registration on the embedded "
                    "stack)"
                ) from exc
            raise
        if schema_id is None:
            raise SchemaNotRegistered(f"registry returned no schema id for subject {subject!r}")
        self._ids[(subject, name)] = schema_id
        # Our own messages decode without a registry round trip.
        current = catalog.parsed_schema(name)
        self._readers.setdefault(schema_id, (RECORD_TYPES[catalog.full_name(name)], current, None))
        logger.debug("schema id %d for subject %s (%s)", schema_id, subject, name)
        return schema_id

    def _auto_registered_id(self, subject: str, schema: Schema) -> int | None:
        """The id of ``schema`` under ``subject``, registering it when missing.

        A lookup first: a subject that already holds the schema is left untouched (its level
        is the operator's). Otherwise the level is set before registering: Apicurio's global
        default is NONE, and a subject registered without its own level accepts anything
        (issue 12).
        """
        try:
            return self._registry.lookup_schema(subject, schema).schema_id
        except SchemaRegistryError as exc:
            if not _not_found(exc):
                raise
        set_level(self._registry, subject, DEFAULT_COMPATIBILITY)
        return self._registry.register_schema(subject, schema)

    # -- decode ----------------------------------------------------------------------------------

    @overload
    def decode(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        expect: type[Expected],
    ) -> Expected: ...

    @overload
    def decode(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        expect: None = None,
    ) -> Record: ...

    def decode(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        expect: type[Any] | None = None,
    ) -> Record:
        """Deserialize a message value into its record dataclass.

        ``expect`` optionally names the record type the topic must carry; anything else is a
        ``SCHEMA_MISMATCH``. Raises ``UndecodableMessage`` for a bad message.
        """

        def fail(code: str, detail: str, schema_id: int | None = None) -> UndecodableMessage:
            return UndecodableMessage(
                code, detail, topic=topic, partition=partition, offset=offset, schema_id=schema_id
            )

        # Step 1. Framing.
        if not value:
            raise fail("EMPTY_MESSAGE", "message value is empty or null (tombstone?)")
        if value[0] != MAGIC_BYTE:
            raise fail("BAD_MAGIC_BYTE", f"first byte is 0x{value[0]:02x}, expected 0x00")
        if len(value) < _HEADER.size:
            raise fail("TRUNCATED_MESSAGE", f"{len(value)} bytes, shorter than the 5-byte header")
        _, schema_id = _HEADER.unpack_from(value)

        # Step 2. Writer schema → record type and reader schema.
        cls, writer, reader = self._reader_for(schema_id, fail)
        if expect is not None and cls is not expect:
            detail = f"{topic} carries {expect.__name__}, message is a {cls.__name__}"
            raise fail("SCHEMA_MISMATCH", detail, schema_id)

        # Step 3. Avro body.
        body = io.BytesIO(memoryview(value)[_HEADER.size :])
        try:
            data = fastavro.schemaless_reader(
                body, writer, reader, return_record_name=True, return_record_name_override=True
            )
        except SchemaResolutionError as exc:
            raise fail(
                "SCHEMA_MISMATCH", f"cannot resolve writer schema: {exc}", schema_id
            ) from exc
        except Exception as exc:
            body_len = len(value) - _HEADER.size
            if isinstance(exc, EOFError) or body.tell() >= body_len:
                detail = f"Avro body ends early ({body_len} bytes): {exc!r}"
                raise fail("TRUNCATED_MESSAGE", detail, schema_id) from exc
            raise fail("AVRO_DECODE_ERROR", f"{type(exc).__name__}: {exc}", schema_id) from exc
        trailing = len(value) - _HEADER.size - body.tell()
        if trailing:
            detail = f"{trailing} bytes left after the record: body does not match its schema"
            raise fail("AVRO_DECODE_ERROR", detail, schema_id)

        # Step 4. Dataclass.
        if not isinstance(data, dict):  # a record schema always reads as a dict
            raise fail("AVRO_DECODE_ERROR", f"body is a {type(data).__name__}, not a record")
        try:
            return cls.from_avro(data)
        except Exception as exc:
            raise fail("AVRO_DECODE_ERROR", f"invalid record: {exc}", schema_id) from exc

    def _reader_for(self, schema_id: int, fail: Any) -> _ReaderEntry:
        cached = self._readers.get(schema_id)
        if cached is not None:
            return cached
        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if _not_found(exc):
                raise fail("UNKNOWN_SCHEMA_ID", "registry has no such schema", schema_id) from exc
            raise
        if (registered.schema_type or "AVRO").upper() != "AVRO":
            detail = f"schema is {registered.schema_type}, not AVRO"
            raise fail("SCHEMA_MISMATCH", detail, schema_id)
        try:
            writer_json = json.loads(registered.schema_str or "")
            writer = fastavro.parse_schema(writer_json)
        except Exception as exc:
            raise fail("SCHEMA_MISMATCH", f"unparseable writer schema: {exc}", schema_id) from exc
        full = catalog.schema_full_name(writer_json) if isinstance(writer_json, dict) else ""
        cls = RECORD_TYPES.get(full)
        if cls is None:
            raise fail("SCHEMA_MISMATCH", f"writer schema {full or '?'} is not ours", schema_id)
        current = catalog.parsed_schema(cls.__name__)
        same = to_parsing_canonical_form(writer) == to_parsing_canonical_form(current)
        entry: _ReaderEntry = (cls, writer, None if same else current)
        self._readers[schema_id] = entry
        return entry


def set_level(registry: SchemaRegistryClient, subject: str, level: str) -> None:
    """Set ``subject``'s compatibility level, racing other writers safely.

    Apicurio stores the level as a rule that the first PUT creates: when two clients set it at
    the same moment, the loser gets 409 "A rule named 'COMPATIBILITY' already exists". The rule
    exists then, and a second PUT updates it.
    """
    try:
        registry.set_compatibility(subject, level)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 409:
            raise
        registry.set_compatibility(subject, level)


def register_all(
    registry: SchemaRegistryClient,
    topics_by_record: Mapping[str, list[str]],
    compatibility: str = DEFAULT_COMPATIBILITY,
) -> dict[str, int]:
    """Register the current schema of each record under ``<topic>-value`` for each topic.

    Sets the subject's compatibility level first (the registry then checks the new version
    against the existing ones), and returns ``{subject: schema id}``. Idempotent: registering
    an unchanged schema returns its existing id. Raises ``SchemaIncompatible`` when the registry
    refuses a schema.
    """
    ids: dict[str, int] = {}
    for record, topics in topics_by_record.items():
        name = catalog.short_name(record)
        schema = Schema(catalog.schema_str(name), "AVRO")
        for topic in topics:
            subject = subject_for(topic)
            set_level(registry, subject, compatibility)
            try:
                ids[subject] = registry.register_schema(subject, schema)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 409:
                    raise SchemaIncompatible(
                        f"registry refused {catalog.full_name(name)} for subject {subject!r} "
                        f"under {compatibility}: {exc.error_message}"
                    ) from exc
                raise
            logger.debug("registered %s under %s as id %d", name, subject, ids[subject])
    return ids
