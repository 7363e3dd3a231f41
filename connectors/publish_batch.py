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
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectors.publisher import PreparedRequest, Publisher, PublishError, RateLimiter
from f2p_errors import InvalidInput
from schemas.images import make_sample_face
from schemas.records import utc_now

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


@dataclasses.dataclass
class PublishSummary:
    """What a publish run did; ``failed`` counts by machine-readable reason."""

    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    failed: Counter[str] = dataclasses.field(default_factory=Counter)
    uploaded_faces: int = 0
    elapsed_s: float = 0.0
    request_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Delivered requests per second."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def request_fields(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Publish fields → keywords of ``GenerationRequest.new`` (None values dropped)."""
    unknown = set(values) - set(FIELDS) - set(SPECIAL)
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"{where}{field}", "unknown field", code="UNKNOWN_FIELD")
    fields = {FIELDS[k]: v for k, v in values.items() if k in FIELDS and v is not None}
    if not isinstance(fields.get("attributes", {}), Mapping):
        reason = "must be an object of string values"
        raise InvalidInput(f"{where}attributes", reason, code="ATTRIBUTE_TOO_LONG")
    deadline_s = values.get("deadline_s")
    if deadline_s is not None:
        if isinstance(deadline_s, bool) or not isinstance(deadline_s, int | float):
            reason = f"must be a number of seconds, got {deadline_s!r}"
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
        path = Path(str(value)).expanduser()
        if self._base is not None and not path.is_absolute():
            path = self._base / path
        if path not in self._cache:
            try:
                self._cache[path] = path.read_bytes()
            except OSError as exc:
                reason = f"cannot read {path}: {exc.strerror or exc}"
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
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"line {number}: "
            try:
                values = json.loads(line)
                if not isinstance(values, dict):
                    raise InvalidInput(f"{where}", "must be a JSON object", code="INVALID_JSON")
                prepared.append(prepare_one(publisher, {**defaults, **values}, faces, where))
            except json.JSONDecodeError as exc:
                errors.append(InvalidInput(f"{where}", f"invalid JSON: {exc}", code="INVALID_JSON"))
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
) -> PublishSummary:
    """Send every request (paced by ``rate``), then resend ``duplicate_fraction`` of them
    unchanged (same request_id: for chaos tests); wait for all deliveries."""
    summary = PublishSummary()
    lock = threading.Lock()
    limiter = RateLimiter(rate)
    chosen: set[int] = set()
    if duplicate_fraction and expected:
        k = round(expected * duplicate_fraction)
        chosen = set(random.Random(seed).sample(range(expected), k))
    resend: list[PreparedRequest] = []

    def done(future) -> None:
        error = future.exception()
        with lock:
            if error is None:
                summary.delivered += 1
                summary.uploaded_faces += future.result().face_uploaded
            else:
                code = error.code if isinstance(error, PublishError) else type(error).__name__
                summary.failed[code] += 1
        if on_delivered is not None:
            on_delivered()

    started = time.monotonic()
    for index, prepared in enumerate(requests):
        limiter.acquire()
        publisher.send(prepared).add_done_callback(done)
        summary.sent += 1
        summary.request_ids.append(prepared.request.request_id)
        if index in chosen:
            resend.append(prepared)
    for prepared in resend:
        limiter.acquire()
        publisher.send(prepared).add_done_callback(done)
        summary.sent += 1
        summary.duplicates += 1
    left = publisher.flush(120.0)
    summary.elapsed_s = time.monotonic() - started
    if left:
        summary.failed["NOT_DELIVERED_IN_TIME"] += left
    return summary
