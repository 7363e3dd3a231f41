"""A corpus of hostile messages (issue 7) and the checks that each got exactly one outcome.

Messages are produced raw — not through the SDK — with explicit partitions, lz4 compression and a
client-side size limit far above the topics' 1 MiB (the broker checks the *compressed* batch, so
a 3 MiB value of one repeated byte is accepted). Every partition that carries poison gets a valid
canary request before and after it: the canaries prove that nothing behind (or before) the poison
is held up, suppressed or duplicated.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from connectors.kafka import make_producer
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from schemas.codec import AvroCodec
from schemas.records import DeadLetter, GenerationRequest, GenerationResult, InlineImage
from tests.inference_consumer.conftest import sample_request

MIB = 1024 * 1024
Headers = list[tuple[str, bytes]]

# What a dead letter may weigh on the DLQ whatever the original (dead_letters.py keeps a 256 KiB
# prefix of the value, 1 KiB of the key, 32 headers of 1 KiB): well under the DLQ's 2 MiB.
MAX_LETTER_BYTES = 320 * 1024


@dataclass
class Case:
    """One message of the corpus and the outcome it must get.

    ``expect`` is ``"OK"``, ``"FAILED:<code>"`` (a result for ``request_id``) or ``"DL:<code>"`` (a
    dead letter for the message's own partition and offset)."""

    name: str
    key: bytes | None
    value: bytes | None
    expect: str
    headers: Headers | None = None
    request_id: str | None = None
    partition: int = 0
    topic: str = ""
    offset: int = -1  # set when produced
    # Attempt the OK/FAILED result must carry.
    attempt: int = 1
    # Produced (and answered) before the rest: a canary that is done before the poison arrives.
    first: bool = False

    @property
    def dead(self) -> bool:
        return self.expect.startswith("DL:")

    @property
    def code(self) -> str:
        return self.expect.split(":", 1)[1] if ":" in self.expect else "OK"


@dataclass
class Corpus:
    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    @property
    def result_ids(self) -> set[str]:
        return {c.request_id for c in self.cases if not c.dead and c.request_id}

    @property
    def dead(self) -> list[Case]:
        return [c for c in self.cases if c.dead]

    @property
    def first(self) -> list[Case]:
        return [c for c in self.cases if c.first]

    @property
    def rest(self) -> list[Case]:
        return [c for c in self.cases if not c.first]


def one_pixel_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 150, 120)).save(out, format="PNG")
    return out.getvalue()


def valid(codec: AvroCodec, topic: str, name: str, partition: int, **fields) -> Case:
    """A valid request keyed by its own request_id."""
    request = sample_request(**fields)
    return Case(
        name,
        request.request_id.encode(),
        codec.encode(topic, request),
        "OK",
        request_id=request.request_id,
        partition=partition,
    )


def request_case(
    codec: AvroCodec,
    topic: str,
    name: str,
    partition: int,
    request: GenerationRequest,
    expect: str,
    *,
    key: bytes | None = None,
    headers: Headers | None = None,
) -> Case:
    return Case(
        name,
        request.request_id.encode() if key is None else key,
        codec.encode(topic, request),
        expect,
        headers=headers,
        request_id=request.request_id,
        partition=partition,
    )


def hostile_corpus(codec: AvroCodec, topic: str, partitions: int) -> Corpus:
    """The poison of issue 7 items 1-3 and 6, spread over ``partitions`` with canaries before
    and after on every partition. The expectations hold on a lane (the worker ignores retry
    headers there) and on an ingress topic (admission forwards none of the ingress headers)."""
    corpus = Corpus()
    before = [corpus.add(valid(codec, topic, f"canary-before-{p}", p)) for p in range(partitions)]
    for case in before:
        case.first = True
    after = [valid(codec, topic, f"canary-after-{p}", p) for p in range(partitions)]
    spot = iter(range(10_000))

    def part() -> int:
        return next(spot) % partitions

    def req(name: str, expect: str = "OK", *, key=None, headers=None, partition=None) -> Case:
        where = part() if partition is None else partition
        made = request_case(
            codec, topic, name, where, sample_request(), expect, key=key, headers=headers
        )
        return corpus.add(made)

    # Item 1: originals larger than the DLQ accepts (both squeezed under 1 MiB by lz4).
    corpus.add(
        Case("3 MiB of 0x01", None, b"\x01" * (3 * MIB), "DL:MESSAGE_TOO_LARGE", partition=part())
    )
    big_key = (b"k3y-" * (MIB // 4))[: int(1.2 * MIB)]
    corpus.add(Case("1.2 MiB key", big_key, b"\x7fgarbage", "DL:BAD_MAGIC_BYTE", partition=part()))
    # Item 2: headers are untrusted; retry headers mean nothing outside the retry topic.
    req("not-before ²", headers=[("f2p-not-before-ms", "²".encode())])
    req("not-before 5000 digits", headers=[("f2p-not-before-ms", b"9" * 5000)])
    req("attempt ²", headers=[("f2p-attempt", "²".encode())])
    req("attempt 5 (would exhaust retries)", headers=[("f2p-attempt", b"5")])
    req("not-before year 2100", headers=[("f2p-not-before-ms", b"4102444800000")])
    many = [(f"h{i}", b"x") for i in range(65)]
    req("65 headers", "DL:TOO_MANY_HEADERS", headers=many)
    req("70 KiB header", "DL:HEADERS_TOO_LARGE", headers=[("big", b"h" * 70 * 1024)])
    # Item 6: a face too small to be a face.
    tiny_face = InlineImage(content_type="image/png", data=one_pixel_png())
    corpus.add(
        request_case(
            codec, topic, "1x1 face", part(), _with_face(tiny_face), "FAILED:FACE_TOO_SMALL"
        )
    )
    # Item 3: the key is not the identity. Garbage keyed with a canary's id (before the canary,
    # on its partition); valid requests keyed with the id of a request before or after them on
    # their partition (answered already, or still to come).
    victim, later, earlier = after[0], after[1 % partitions], before[2 % partitions]
    for n, value in enumerate((b"\x7fgarbage-one", b"\x00\x00\x0f\x42\x3fgarbage-two")):
        code = "DL:BAD_MAGIC_BYTE" if n == 0 else "DL:UNKNOWN_SCHEMA_ID"
        corpus.add(Case(f"garbage keyed as a canary #{n}", victim.key, value, code, partition=0))
    req("valid, keyed with a later request's id", key=later.key, partition=later.partition)
    req("valid, keyed with an earlier request's id", key=earlier.key, partition=earlier.partition)
    for case in after:
        corpus.add(case)
    for case in corpus.cases:
        case.topic = topic
    assert len(before) == partitions
    return corpus


def _with_face(face: InlineImage) -> GenerationRequest:
    return GenerationRequest.new(
        "acme", "studio portrait", face, width=64, height=64, steps=2, true_cfg_scale=1.0
    )


def produce_corpus(settings: Settings, cases: list[Case]) -> None:
    """Produce ``cases`` in order to their topic and partition; record their offsets."""
    producer = make_producer(
        settings,
        client_id="hostile-producer",
        compression_type="lz4",
        message_max_bytes=8 * MIB,
        linger_ms=0,
    )
    errors: list[object] = []

    def report(case: Case):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append((case.name, err))
            else:
                case.offset = msg.offset()

        return on_delivery

    for case in cases:
        producer.produce(
            case.topic,
            key=case.key,
            value=case.value,
            headers=case.headers,
            partition=case.partition,
            on_delivery=report(case),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


@dataclass
class Letters:
    """Dead letters as committed, with the size of each record as the broker holds it."""

    letters: list[DeadLetter]
    sizes: list[int]


def read_letters(settings: Settings, codec: AvroCodec) -> Letters:
    raw = list(read_to_end(settings, settings.topics.dlq, timeout_s=60))
    letters = [codec.decode(settings.topics.dlq, m.value()) for m in raw]
    sizes = [len(m.value()) + len(m.key() or b"") for m in raw]
    return Letters(letters, sizes)


def check_outcomes(
    corpus: Corpus,
    results: list[GenerationResult],
    letters: Letters,
    s3,
) -> list[str]:
    """Assert exactly one outcome per case, as expected; the bounded letters; the claim checks.
    Returns one line per case (for the report)."""
    counts = Counter(r.request_id for r in results)
    assert set(counts) == corpus.result_ids, (
        set(counts) ^ corpus.result_ids,
        [c.name for c in corpus.cases if c.request_id in set(counts) ^ corpus.result_ids],
    )
    assert set(counts.values()) == {1}, counts.most_common(3)
    by_id = {r.request_id: r for r in results}
    by_place = Counter(
        (d.source_topic, d.source_partition, d.source_offset) for d in letters.letters
    )
    assert set(by_place.values()) <= {1}, by_place.most_common(3)
    expected_places = {(c.topic, c.partition, c.offset) for c in corpus.dead}
    assert set(by_place) == expected_places, set(by_place) ^ expected_places
    letter_at = {(d.source_topic, d.source_partition, d.source_offset): d for d in letters.letters}
    assert max(letters.sizes, default=0) <= MAX_LETTER_BYTES, max(letters.sizes)
    lines = []
    for case in corpus.cases:
        if case.dead:
            letter = letter_at[(case.topic, case.partition, case.offset)]
            assert letter.error_code == case.code, (case.name, letter.error_code)
            _check_letter(case, letter, s3)
            lines.append(f"{case.name}: dead letter {letter.error_code}")
            continue
        result = by_id[case.request_id]
        assert str(result.status) == case.expect.split(":")[0], (case.name, result)
        if case.expect.startswith("FAILED"):
            assert result.error is not None and result.error.code == case.code, case.name
        assert result.attempt == case.attempt, (case.name, result.attempt)
        lines.append(f"{case.name}: {result.status}" + (f" {case.code}" if result.error else ""))
    return lines


def _check_letter(case: Case, letter: DeadLetter, s3) -> None:
    """Sizes and digests describe the whole original; what was cut is in S3 (claim check)."""
    key, value = case.key, case.value
    assert letter.request_id is None, case.name  # a dead letter names no identity it lacks
    assert letter.key_size == (-1 if key is None else len(key)), case.name
    assert letter.value_size == (-1 if value is None else len(value)), case.name
    assert letter.key_sha256 == (hashlib.sha256(key).hexdigest() if key is not None else None)
    assert letter.value_sha256 == (hashlib.sha256(value).hexdigest() if value is not None else None)
    assert letter.key is None or (key is not None and key.startswith(letter.key))
    assert letter.value is None or (value is not None and value.startswith(letter.value))
    cut = (key is not None and len(key) > 1024) or (value is not None and len(value) > 256 * 1024)
    headers_cut = len(case.headers or ()) > 32 or any(len(v) > 1024 for _, v in case.headers or ())
    assert letter.truncated == (cut or headers_cut), (case.name, letter.truncated)
    if not cut:
        assert letter.original_uri is None, case.name
        return
    assert letter.original_uri is not None, case.name
    bucket, _, object_key = letter.original_uri.removeprefix("s3://").partition("/")
    stored = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()
    assert stored == (value or b""), case.name
    if key is not None and len(key) > 1024:
        key_object = object_key.rsplit("/", 1)[0] + "/key"
        assert s3.get_object(Bucket=bucket, Key=key_object)["Body"].read() == key, case.name
