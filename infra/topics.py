"""Topics as code: load ``infra/topics.toml`` and make the broker match it.

``apply_topics`` creates missing topics, raises partition counts when asked (Kafka cannot lower
them), optionally aligns drifted configs, and otherwise only reports drift. Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from f2p_errors import ConfigError, F2PError
from schemas.catalog import RECORD_NAMES

TOPICS_FILE = Path(__file__).with_name("topics.toml")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True)
class TopicSpec:
    """One topic as declared: name, partitions, replication, topic-level configs, and the Avro
    record its values carry (``value_schema``, None for a topic without registry-framed Avro)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    doc: str = ""
    value_schema: str | None = None


@dataclass(frozen=True)
class Drift:
    """A difference between the spec and the broker that ``apply`` did not (or could not) fix."""

    topic: str
    setting: str
    spec: str
    actual: str


@dataclass
class ApplyReport:
    """What ``apply_topics`` did."""

    created: list[str] = field(default_factory=list)
    partitions_raised: list[str] = field(default_factory=list)
    configs_altered: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    # Things an operator must read even though nothing failed (low replication on a cluster).
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.configs_altered)


class TopicApplyError(F2PError):
    """The broker refused to create or change a topic."""


def load_topic_specs(
    path: Path = TOPICS_FILE, *, profile: str | None = None, suffix: str = ""
) -> list[TopicSpec]:
    """Parse the spec file; ``profile`` overlays e.g. production replication, ``suffix`` is
    appended to every name (tests use it to get a private set of topics)."""
    raw = tomllib.loads(path.read_text())
    defaults = raw.get("defaults", {})
    replication = defaults.get("replication_factor", 1)
    base_config = dict(defaults.get("config", {}))
    if profile is not None:
        overlay = raw.get("profiles", {}).get(profile)
        if overlay is None:
            known = ", ".join(raw.get("profiles", {})) or "none"
            raise ConfigError(f"topics profile {profile!r} is not defined (known: {known})")
        replication = overlay.get("replication_factor", replication)
        base_config.update(overlay.get("config", {}))
    specs = []
    for name, body in raw.get("topics", {}).items():
        partitions = body.get("partitions")
        if not isinstance(partitions, int) or partitions < 1:
            raise ConfigError(f"{path}: topics.{name}.partitions must be a positive integer")
        config = {**base_config, **{k: str(v) for k, v in body.get("config", {}).items()}}
        value_schema = body.get("value_schema")
        if value_schema is not None and value_schema not in RECORD_NAMES:
            raise ConfigError(
                f"{path}: topics.{name}.value_schema {value_schema!r} is not a record in "
                f"schemas/avro (known: {', '.join(RECORD_NAMES)})"
            )
        if not _TOPIC_NAME.fullmatch(name + suffix):
            raise ConfigError(
                f"topic name {(name + suffix)[:300]!r} is not a legal Kafka topic name (letters, "
                f"digits, '.', '_', '-'; at most 249 characters): check --suffix"
            )
        specs.append(
            TopicSpec(
                name=name + suffix,
                partitions=partitions,
                replication_factor=body.get("replication_factor", replication),
                config=config,
                doc=body.get("doc", ""),
                value_schema=value_schema,
            )
        )
    return specs


def apply_topics(
    admin: AdminClient,
    specs: list[TopicSpec],
    *,
    raise_partitions: bool = False,
    alter_configs: bool = False,
    dry_run: bool = False,
    timeout_s: float = 30.0,
) -> ApplyReport:
    """Make the broker match ``specs`` as far as asked; return what changed and what drifts."""
    report = ApplyReport()
    metadata = admin.list_topics(timeout=timeout_s)
    missing = [s for s in specs if s.name not in metadata.topics]
    existing = [s for s in specs if s.name in metadata.topics]
    report.warnings += _check_replication(specs, missing, len(metadata.brokers))

    if missing and not dry_run:
        new_topics = [
            NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in missing
        ]
        for name, future in admin.create_topics(new_topics, request_timeout=timeout_s).items():
            try:
                future.result()
                report.created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent apply won
                    raise TopicApplyError(f"creating topic {name} failed: {exc}") from exc
        wait_for_topics(admin, report.created, timeout_s)
    elif dry_run:
        report.created = [s.name for s in missing]

    actual_configs = describe_configs(admin, [s.name for s in existing], timeout_s)
    if alter_configs:
        _refuse_min_insync_above_replication(existing, metadata.topics, actual_configs)
    for spec in existing:
        changed = False
        report.drift += _replication_drift(spec, metadata.topics[spec.name])
        partitions = len(metadata.topics[spec.name].partitions)
        if partitions < spec.partitions and raise_partitions:
            if not dry_run:
                _raise_partitions(admin, spec, timeout_s)
            report.partitions_raised.append(spec.name)
            changed = True
        elif partitions != spec.partitions:
            report.drift.append(
                Drift(spec.name, "partitions", str(spec.partitions), str(partitions))
            )
        config_drift = [
            Drift(spec.name, key, value, actual_configs[spec.name].get(key, "<unset>"))
            for key, value in spec.config.items()
            if actual_configs[spec.name].get(key) != value
        ]
        if config_drift and alter_configs:
            if not dry_run:
                _alter_configs(admin, spec, config_drift, timeout_s)
            report.configs_altered.append(spec.name)
            changed = True
        else:
            report.drift.extend(config_drift)
        if not changed:
            report.unchanged.append(spec.name)
    return report


# -- replication (issue 7 item 12) ----------------------------------------------------------------


def replication_range(topic_metadata: Any) -> tuple[int, int]:
    """(fewest, most) replicas over the partitions of a topic in ``list_topics`` metadata."""
    counts = [len(p.replicas) for p in topic_metadata.partitions.values()] or [0]
    return min(counts), max(counts)


def format_replication(topic_metadata: Any) -> str:
    """``3``, or ``1-3`` when partitions differ."""
    low, high = replication_range(topic_metadata)
    return str(low) if low == high else f"{low}-{high}"


def _check_replication(specs: list[TopicSpec], missing: list[TopicSpec], brokers: int) -> list[str]:
    """Refuse topics the cluster cannot host; warn about ones it hosts unsafely.

    More replicas than brokers, or min.insync.replicas above the replication factor, can never
    accept an acks=all write: TopicApplyError before anything is created. Fewer replicas than
    the cluster could give (an apply without ``--profile production`` on 3 brokers) is legal
    and may be intended, but cannot be fixed later by ``apply`` (replication changes need a
    reassignment): a warning, so the operator sees it before relying on those topics.
    """
    for spec in missing:
        if spec.replication_factor > brokers:
            raise TopicApplyError(
                f"topic {spec.name}: replication factor {spec.replication_factor} needs "
                f"{spec.replication_factor} brokers, the cluster has {brokers}; use a profile "
                f"that fits (no --profile on the 1-broker embedded stack)"
            )
        min_insync = _min_insync(spec)
        if min_insync is not None and min_insync > spec.replication_factor:
            raise TopicApplyError(
                f"topic {spec.name}: min.insync.replicas {min_insync} is above its replication "
                f"factor {spec.replication_factor}: no acks=all write could ever succeed"
            )
    safe = min(3, brokers)
    low = sorted(s.name for s in specs if s.replication_factor < safe)
    if not low:
        return []
    factors = sorted({s.replication_factor for s in specs if s.replication_factor < safe})
    return [
        f"the cluster has {brokers} brokers but {len(low)} topic(s) have replication factor "
        f"{'/'.join(map(str, factors))} in this profile (e.g. {low[0]}): losing one broker "
        f"makes their partitions unavailable, and apply cannot raise replication later; "
        f"use --profile production (replication 3, min.insync.replicas 2)"
    ]


def _replication_drift(spec: TopicSpec, topic_metadata: Any) -> list[Drift]:
    low, high = replication_range(topic_metadata)
    if low == high == spec.replication_factor:
        return []
    actual = format_replication(topic_metadata)
    return [Drift(spec.name, "replication_factor", str(spec.replication_factor), actual)]


def _refuse_min_insync_above_replication(
    existing: list[TopicSpec], topics: dict, actual_configs: dict[str, dict[str, str]]
) -> None:
    """``--alter-configs`` never sets min.insync.replicas above a topic's actual replication:
    the topic would refuse every acks=all write. Checked for all topics before altering any."""
    for spec in existing:
        min_insync = _min_insync(spec)
        if min_insync is None or actual_configs[spec.name].get("min.insync.replicas") == str(
            min_insync
        ):
            continue  # not going to be altered
        low, _ = replication_range(topics[spec.name])
        if min_insync > low:
            raise TopicApplyError(
                f"topic {spec.name}: refusing to set min.insync.replicas={min_insync} on a topic "
                f"with replication factor {format_replication(topics[spec.name])} (every acks=all "
                f"write would fail); raise its replication first (f2p kafka reassign-partitions) "
                f"or apply a profile that matches it; nothing was altered"
            )


def _min_insync(spec: TopicSpec) -> int | None:
    raw = spec.config.get("min.insync.replicas")
    try:
        return None if raw is None else int(raw)
    except ValueError as exc:
        raise ConfigError(
            f"topic {spec.name}: min.insync.replicas {raw!r} is not an integer"
        ) from exc


def wait_for_topics(
    admin: AdminClient, names: list[str], timeout_s: float = 30.0, *, partitions: int = 0
) -> None:
    """Block until every topic in ``names`` is in the broker's metadata with leaders (and at
    least ``partitions`` partitions).

    CreateTopics returns before the new topics reach the metadata cache; a client that produces
    (or an ``apply`` that lists topics) right away could otherwise miss them.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout_s).topics
        pending = {
            n
            for n in pending
            if n not in topics
            or topics[n].error is not None
            or len(topics[n].partitions) < partitions
            or any(p.leader < 0 for p in topics[n].partitions.values())
        }
        if pending and time.monotonic() > deadline:
            raise TopicApplyError(f"topics not visible after {timeout_s:.0f} s: {sorted(pending)}")
        if pending:
            time.sleep(0.05)


def describe_configs(
    admin: AdminClient, topics: list[str], timeout_s: float = 30.0
) -> dict[str, dict[str, str]]:
    """Topic-level config values as the broker reports them, by topic name."""
    if not topics:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    result = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        entries = future.result()
        result[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return result


def _raise_partitions(admin: AdminClient, spec: TopicSpec, timeout_s: float) -> None:
    futures = admin.create_partitions(
        [NewPartitions(spec.name, spec.partitions)], request_timeout=timeout_s
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicApplyError(f"raising partitions of {name} failed: {exc}") from exc
    wait_for_topics(admin, [spec.name], timeout_s, partitions=spec.partitions)


def _alter_configs(admin: AdminClient, spec: TopicSpec, drift: list[Drift], timeout_s: float):
    entries = [
        ConfigEntry(d.setting, d.spec, incremental_operation=AlterConfigOpType.SET) for d in drift
    ]
    resource = ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=entries)
    for name, future in admin.incremental_alter_configs([resource]).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            raise TopicApplyError(f"altering configs of {name} failed: {exc}") from exc


def create_topic(
    admin: AdminClient, name: str, partitions: int = 1, config: dict[str, str] | None = None
) -> str:
    """Create one topic and wait until it exists; for tests and tools. Its replication factor
    is the broker's default (1 on the embedded stack, 3 on a 3-broker cluster, where an
    unreplicated topic would refuse acks=all writes under min.insync.replicas=2)."""
    future = admin.create_topics([NewTopic(name, partitions, -1, config=config or {})])[name]
    future.result()
    wait_for_topics(admin, [name])
    return name


def delete_topics(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics (missing ones are ignored); for tests and tools that made private topics."""
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise TopicApplyError(f"deleting topic {name} failed: {exc}") from exc
