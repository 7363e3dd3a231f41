"""Publishing many requests: inputs of ``f2p publish`` (flags, JSON lines, load generation) and
the send loop with rate limit, progress and a summary.

An input is a dict of publish fields, the same names on the command line (``--num-images``) and
in JSON lines (``num_images``):

``face`` (path; relative to the JSONL file), ``prompt``, ``negative_prompt``, ``tenant``,
``lane``, ``request_id``, ``seed``, ``steps``, ``cfg``, ``width``, ``height``, ``num_images``,
``lora_scale``, ``format``, ``quality``, ``deadline_s`` (seconds from now), ``attributes``
(an object of strings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectors.publisher import (
    DeliveryReport,
    PreparedRequest,
    Publisher,
    PublishError,
    RateLimiter,
)
from f2p_errors import InvalidInput
from schemas.images import make_sample_face
from schemas.records import utc_now
from schemas.validation import shown as _shown

#: Input field → ``GenerationRequest.new`` keyword.
FIELDS: dict[str, str] = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "tenant": "tenant_id",
    "lane": "lane", "request_id": "request_id", "seed": "seed", "steps": "steps",
    "cfg": "true_cfg_scale", "width": "width", "height": "height", "num_images": "num_images",
    "lora_scale": "lora_scale", "format": "output_format", "quality": "output_quality",
    "attributes": "attributes",
}  # fmt: skip
#: Inputs handled here rather than passed through.
SPECIAL = ("face", "deadline_s")

SAMPLE_PROMPT = "studio photo of this person, full body, white background, soft light"

#: Longest allowed deadline: the request lanes keep 7 days (infra/topics.toml); a request
#: cannot wait longer than its own record lives.
MAX_DEADLINE_S = 7 * 24 * 3600.0
#: Longest JSON line read: a request at every field's limit is ~150 KiB of JSON.
MAX_LINE_BYTES = 1024 * 1024


@dataclasses.dataclass
class PublishSummary:
    """What a publish run did. Every request handed to the publisher (``sent``) ends counted
    once: ``delivered`` or ``failed`` by machine-readable reason, with the first message of
    each reason in ``errors`` (the cause: S3 endpoint and error code, Kafka address...).
    ``not_sent`` counts requests never handed over because the first one failed."""

    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    failed: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    not_sent: int = 0
    uploaded_faces: int = 0
    elapsed_s: float = 0.0
    request_ids: list[str] = dataclasses.field(default_factory=list)
    failed_request_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Delivered requests per second."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def request_fields(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Publish fields → keywords of ``GenerationRequest.new`` (None values dropped)."""
    unknown = set(values) - set(FIELDS) - set(SPECIAL)
    if unknown:
        field = sorted(unknown)[0]
        name = field if len(field) <= 64 and field.isprintable() else _shown(field)
        raise InvalidInput(f"{where}{name}", "unknown field", code="UNKNOWN_FIELD")
    fields = {FIELDS[k]: v for k, v in values.items() if k in FIELDS and v is not None}
    if not isinstance(fields.get("attributes", {}), Mapping):
        reason = "must be an object of string values"
        raise InvalidInput(f"{where}attributes", reason, code="ATTRIBUTE_TOO_LONG")
    deadline_s = values.get("deadline_s")
    if deadline_s is not None:
        if isinstance(deadline_s, bool) or not isinstance(deadline_s, int | float):
            reason = f"must be a number of seconds, got {_shown(deadline_s)}"
            raise InvalidInput(f"{where}deadline_s", reason, code="INVALID_DEADLINE")
        # NaN, infinities and 1e300 pass the type check but not timedelta().
        if not (math.isfinite(deadline_s) and 0 < deadline_s <= MAX_DEADLINE_S):
            reason = (
                f"must be more than 0 and at most {MAX_DEADLINE_S:.0f} seconds (7 days, the "
                f"request topics' retention), got {_shown(deadline_s)}"
            )
            raise InvalidInput(f"{where}deadline_s", reason, code="INVALID_DEADLINE")
        now = utc_now()
        fields["submitted_at"] = now
        fields["deadline"] = now + timedelta(seconds=deadline_s)
    return fields


class FaceFiles:
    """Reads face files once each (many lines usually share a face)."""

    def __init__(self, base: Path | None = None) -> None:
        self._base = base
        self._cache: dict[Path, bytes] = {}

    def read(self, value: object, field: str = "face") -> bytes:
        if value is None or value == "":
            raise InvalidInput(field, "is required: a path to a PNG, JPEG or WebP image",
                               code="MISSING_IMAGE")  # fmt: skip
        if not isinstance(value, str | Path):
            reason = f"must be a path to a PNG, JPEG or WebP image, got {_shown(value)}"
            raise InvalidInput(field, reason, code="MISSING_IMAGE")
        path = Path(value).expanduser()
        if self._base is not None and not path.is_absolute():
            path = self._base / path
        if path not in self._cache:
            try:
                self._cache[path] = path.read_bytes()
            except (OSError, ValueError) as exc:
                # ValueError: a NUL byte, or a character no file name can hold (lone surrogate).
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                reason = f"cannot read {_shown(str(path))}: {detail}"
                raise InvalidInput(field, reason, code="MISSING_IMAGE") from exc
        return self._cache[path]


def prepare_one(publisher: Publisher, values: Mapping[str, Any], faces: FaceFiles,
                where: str = "") -> PreparedRequest:  # fmt: skip
    """Validate one input into a prepared request; InvalidInput names ``where`` + the field."""
    try:
        fields = request_fields(values, where)
        face = faces.read(values.get("face"), f"{where}face")
        return publisher.prepare(face=face, **fields)
    except InvalidInput as exc:
        if exc.field.startswith(where):
            raise
        raise InvalidInput(f"{where}{exc.field}", exc.reason, code=exc.code) from exc


def prepare_jsonl(
    publisher: Publisher, path: Path, defaults: Mapping[str, Any], max_errors: int = 20
) -> list[PreparedRequest]:
    """Validate every line of ``path`` (over ``defaults``) before anything is sent.

    Raises InvalidInput listing up to ``max_errors`` bad lines (``line 3: params.steps: ...``).
    """
    faces = FaceFiles(path.parent)
    prepared, errors = [], []
    for number, raw in _numbered_lines(path):
        where = f"line {number}: "
        try:
            values = _parse_line(raw, where, first=number == 1)
            if values is None:
                continue
            prepared.append(prepare_one(publisher, {**defaults, **values}, faces, where))
        except InvalidInput as exc:
            errors.append(exc)
        if len(errors) >= max_errors:
            break
    if len(errors) == 1:
        raise errors[0]
    if errors:  # one error naming every bad line, the first one's field and code
        more = "\n".join(str(e) for e in errors[1:])
        raise InvalidInput(errors[0].field, f"{errors[0].reason}\n{more}", code=errors[0].code)
    if not prepared:
        raise InvalidInput(str(path), "contains no request", code="EMPTY_INPUT")
    return prepared


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each line; None for a line longer than ``MAX_LINE_BYTES``, which
    is skipped without being held in memory."""
    try:
        with path.open("rb") as lines:
            number = 0
            while True:
                line = lines.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):  # skip the rest of this line
                        line = lines.readline(MAX_LINE_BYTES)
                    yield number, None
                else:
                    yield number, line
    except OSError as exc:
        reason = f"cannot read: {exc.strerror or exc}"
        raise InvalidInput(str(path), reason, code="INVALID_JSON") from exc


def _parse_line(raw: bytes | None, where: str, *, first: bool) -> dict[str, Any] | None:
    """One JSON object from one line (None for a blank line); InvalidInput naming the line."""
    where = where.removesuffix(": ")  # the line itself is the field
    if raw is None:
        reason = f"is longer than {MAX_LINE_BYTES} bytes"
        raise InvalidInput(where, reason, code="INVALID_JSON")
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")  # a BOM may open the file
    except UnicodeDecodeError as exc:
        reason = f"is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise InvalidInput(where, reason, code="INVALID_TEXT") from None
    if not text.strip():
        return None
    try:
        values = json.loads(text)
    except RecursionError:
        raise InvalidInput(where, "invalid JSON: nested too deeply", code="INVALID_JSON") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise InvalidInput(where, f"invalid JSON: {exc}", code="INVALID_JSON") from None
    if not isinstance(values, dict):
        raise InvalidInput(where, "must be a JSON object", code="INVALID_JSON")
    return values


def sample_requests(
    publisher: Publisher, count: int, defaults: Mapping[str, Any], distinct_faces: int = 1
) -> Iterator[PreparedRequest]:
    """``count`` requests with the bundled sample faces (``distinct_faces`` different ones)."""
    faces = [make_sample_face(seed=i) for i in range(min(distinct_faces, count))]
    values = {"prompt": SAMPLE_PROMPT, **{k: v for k, v in defaults.items() if v is not None}}
    values.pop("face", None)
    for i in range(count):  # fields per request: a deadline counts from each one's submission
        yield publisher.prepare(face=faces[i % len(faces)], **request_fields(values))


def publish_all(
    publisher: Publisher,
    requests: Iterable[PreparedRequest],
    *,
    rate: float | None = None,
    duplicate_fraction: float = 0.0,
    expected: int | None = None,
    on_delivered: Callable[[], None] | None = None,
    seed: int = 0,
    first_alone: bool = True,
    flush_timeout_s: float = 120.0,
) -> PublishSummary:
    """Send every request (paced by ``rate``), then resend ``duplicate_fraction`` of them
    unchanged (same request_id: for chaos tests); wait for all deliveries.

    ``first_alone``: the first request is sent alone and awaited; when it fails nothing else is
    sent (``not_sent``). A wrong S3 secret, a closed port or a missing permission fails every
    request the same way, and the first failure already says why. Each request is counted once:
    one still pending at the flush deadline is NOT_DELIVERED_IN_TIME, and its delivery report,
    should it come later, is ignored.
    """
    summary = PublishSummary()
    lock = threading.Lock()
    closed = False
    limiter = RateLimiter(rate)
    chosen: set[int] = set()
    if duplicate_fraction and expected:
        k = round(expected * duplicate_fraction)
        chosen = set(random.Random(seed).sample(range(expected), k))
    resend: list[PreparedRequest] = []

    def done(request_id: str, future: Future[DeliveryReport]) -> None:
        error = future.exception()
        with lock:
            if closed:
                return
            if error is None:
                summary.delivered += 1
                summary.uploaded_faces += future.result().face_uploaded
            else:
                code = error.code if isinstance(error, PublishError) else type(error).__name__
                summary.failed[code] += 1
                summary.errors.setdefault(code, str(error))
                summary.failed_request_ids.append(request_id)
        if on_delivered is not None:
            on_delivered()

    def send(prepared: PreparedRequest) -> Future[DeliveryReport]:
        limiter.acquire()
        future = publisher.send(prepared)
        future.add_done_callback(functools.partial(done, prepared.request.request_id))
        summary.sent += 1
        return future

    started = time.monotonic()
    pending = iter(requests)
    for index, prepared in enumerate(pending):
        future = send(prepared)
        summary.request_ids.append(prepared.request.request_id)
        if index in chosen:
            resend.append(prepared)
        if index == 0 and first_alone and _failed(future, flush_timeout_s):
            rest = sum(1 for _ in pending) if expected is None else expected - 1
            summary.not_sent = rest
            resend.clear()
            break
    for prepared in resend:
        send(prepared)
        summary.duplicates += 1
    publisher.flush(flush_timeout_s)
    with lock:
        closed = True
        left = summary.sent - summary.delivered - sum(summary.failed.values())
        if left:
            summary.failed["NOT_DELIVERED_IN_TIME"] += left
            summary.errors.setdefault(
                "NOT_DELIVERED_IN_TIME",
                f"{left} request(s) still not delivered after {flush_timeout_s:g} s",
            )
    summary.elapsed_s = time.monotonic() - started
    return summary


def _failed(future: Future[DeliveryReport], timeout_s: float) -> bool:
    """Wait for ``future``; True when it failed (False when it succeeded or is still going)."""
    try:
        future.result(timeout=timeout_s)
    except FutureTimeout:
        return False
    except Exception:
        return True
    return False
