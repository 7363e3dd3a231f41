"""Topic names of the pipeline and which record each carries (TopicNameStrategy subjects).

Subjects are ``<topic>-value``; message keys are the plain UTF-8 request_id (no schema).
"""

from __future__ import annotations

from collections.abc import Mapping

REQUESTS_INTERACTIVE = "f2p.requests.interactive"
REQUESTS_BATCH = "f2p.requests.batch"
RETRY = "f2p.retry.v1"
RESULTS = "f2p.results.v1"
DLQ = "f2p.dlq.v1"

#: Lane name (``Lane.value``) → request topic.
LANE_TOPICS: dict[str, str] = {"INTERACTIVE": REQUESTS_INTERACTIVE, "BATCH": REQUESTS_BATCH}

#: Topic → record name carried as the message value.
DEFAULT_SUBJECTS: dict[str, str] = {
    REQUESTS_INTERACTIVE: "GenerationRequest",
    REQUESTS_BATCH: "GenerationRequest",
    RETRY: "GenerationRequest",
    RESULTS: "GenerationResult",
    DLQ: "DeadLetter",
}


def subject_for(topic: str) -> str:
    """TopicNameStrategy: the value subject of ``topic``."""
    return f"{topic}-value"


def topics_by_record(subjects: Mapping[str, str] = DEFAULT_SUBJECTS) -> dict[str, list[str]]:
    """Invert a topic → record mapping into record → topics (the shape ``register_all`` takes)."""
    out: dict[str, list[str]] = {}
    for topic, record in subjects.items():
        out.setdefault(record, []).append(topic)
    return out
