"""Topic names of the pipeline and the TopicNameStrategy subject of a topic.

Subjects are ``<topic>-value``; message keys are plain UTF-8 (no schema). Which record each
topic carries is declared in ``infra/topics.toml`` (``value_schema``), read by
``connectors.registry.project_subjects``.
"""

from __future__ import annotations

REQUESTS_INTERACTIVE = "f2p.requests.interactive"
REQUESTS_BATCH = "f2p.requests.batch"
RETRY = "f2p.retry.v1"
RESULTS = "f2p.results.v1"
DLQ = "f2p.dlq.v1"
STATUS = "f2p.status.v1"
CONTROL = "f2p.control.v1"

#: Lane name (``Lane.value``) → request topic.
LANE_TOPICS: dict[str, str] = {"INTERACTIVE": REQUESTS_INTERACTIVE, "BATCH": REQUESTS_BATCH}


def subject_for(topic: str) -> str:
    """TopicNameStrategy: the value subject of ``topic``."""
    return f"{topic}-value"
