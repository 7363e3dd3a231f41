"""The worker's configuration: one frozen object built at the entry point from flags and env.

Every field has an ``F2P_WORKER_*`` variable (upper-cased field name) and a default that works
on the embedded stack; the retry policy's fields have ``F2P_WORKER_RETRY_*`` variables
(``RETRY_VARIABLES``). Kafka timeouts left unset follow the cluster (``KafkaTimeouts``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from connectors.env_config import env_values, parse_value
from connectors.kafka import KafkaTimeouts
from connectors.object_store import OBJECT_STORES
from f2p_errors import ConfigError
from schemas.records import ImageFormat


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: in place first, then through the retry topic."""

    # In place (same worker, same transaction window): quick blips of S3 or the broker.
    in_place_attempts: int = 3
    in_place_backoff_s: float = 0.25
    # Through f2p.retry.v1: attempt n waits retry_backoff_s * 2**(n-1) before it is redone.
    max_attempts: int = 5
    retry_backoff_s: float = 2.0
    max_retry_backoff_s: float = 30.0

    def retry_delay_s(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` when ``attempt`` failed transiently."""
        return min(self.retry_backoff_s * 2 ** (attempt - 1), self.max_retry_backoff_s)


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one worker process (one GPU)."""

    worker_id: str = field(default_factory=lambda: f"worker-{socket.gethostname()}")
    group_id: str = "f2p-workers"
    # Batching: a batch starts as soon as the engine is free, with the compatible requests that
    # queued while it was busy (opportunistic); a positive wait holds an incomplete batch up to
    # that long after its oldest request arrived (each ms is added latency at low load).
    max_batch_wait_ms: int = 0
    # In-flight bound (polled, not yet done); partitions are paused above it and resumed below
    # half of it. A few batches' worth keeps the engine fed without hoarding.
    max_in_flight: int = 64
    # Share of max_in_flight each lane may hold at most, so a backlog on a low lane cannot take
    # every slot from a higher one (and the engine's lane weights, stride-scheduled). Over quota
    # weighs 1/16 of batch: with a flood queued over quota, traffic within quota keeps 94 % of
    # the engine (80 % at the former 1:4), enough headroom above quotas provisioned at up to
    # ~90 % of the fleet to drain a tenant's burst in seconds, not minutes; over-quota work still
    # gets 6 % (never starved) and all of the capacity the lanes above leave (`f2p bench -s
    # fairness`, docs/BENCHMARKS.md). The in-flight caps follow from the weights
    # (``Worker._loop_config``).
    lane_weights: tuple[tuple[str, float], ...] = (
        ("interactive", 16.0),
        ("batch", 4.0),
        ("overquota", 0.25),
    )
    # A message whose value is larger than this is dead-lettered unread (the lanes' own limit
    # is 1 MiB compressed; a valid request is a few KiB plus at most 256 KiB of inline face).
    max_message_bytes: int = 2 * 1024 * 1024
    # Bytes of decoded pixels being decoded at once, and of work held between stages; above
    # the latter the worker stops fetching. Faces are held scaled down to the condition area.
    decode_budget_bytes: int = 256 * 1024 * 1024
    held_bytes_limit: int = 512 * 1024 * 1024
    # Offsets between a partition's commit point and its highest polled offset (the done
    # offsets above the point travel in the commit metadata).
    max_window: int = 4096
    # /healthz turns 503 when work waits and nothing committed or progressed for this long.
    stall_timeout_s: float = 300.0
    prefetch_threads: int = 4
    upload_threads: int = 4
    output_format: ImageFormat = ImageFormat.WEBP
    # Encoder effort of the result images (Pillow's own parameters): CPU on the output threads
    # against bytes in S3, with the request's quality unchanged. On two photos at 1024² and
    # quality 90 (docs/BENCHMARKS.md), WebP method 0 took 34-60 ms of CPU against 111-139 ms
    # for Pillow's default 4, for 9-10 % more bytes at the same PSNR; PNG (lossless) level 1
    # took 117-166 ms against 398 ms for the default 6, for 11-14 % more bytes. Every image of
    # every request pays it, so the cheap end is the default; raise it where storage or egress
    # costs more than the worker's CPU.
    webp_method: int = 0
    png_compress_level: int = 1
    # Commit completed outcomes as soon as no transaction runs, but at most every
    # commit_interval_ms while little is in flight, rising to max_commit_interval_ms as the
    # in-flight count reaches max_in_flight (LoopConfig: sparse completions commit at once,
    # a backlog shares fewer, bigger transactions). Measured at zero service time (issue 10,
    # docs/BENCHMARKS.md): 0/50 gives ~9-11 results per transaction and 0.6-0.75 ms of broker
    # CPU per request against ~2.5-4.5 and 1.1-5 ms with a fixed 5 ms; at 50 % load both
    # commit each result at once.
    commit_interval_ms: int = 0
    max_commit_interval_ms: int = 50
    # A RUNNING status event waits this long for a result (or another completion) to share its
    # transaction before it gets one of its own: at 50 % load this halves the transactions
    # (0.5 -> 1.0 results per transaction) and the time one is open (27 -> 17-22 %).
    running_event_delay_ms: int = 100
    # How long the poll thread waits for messages while work is in flight. While a batch is in
    # the engine or its outputs are being written it waits for their completions instead (a
    # consumer poll cannot be woken by them), and a message then waits up to this long.
    # Shorter is not better: 0.5 ms made the poll thread spin and the other threads wait for
    # the GIL (docs/BENCHMARKS.md).
    busy_poll_ms: float = 2.0
    # kill -9 is detected after session_timeout_ms; transactions of a dead worker are aborted
    # by the coordinator after transaction_timeout_ms. Both bound failover time. None: chosen
    # for the cluster at start-up (``KafkaTimeouts.for_cluster``).
    session_timeout_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    transaction_timeout_ms: int | None = None
    # KIP-345 static membership (group.instance.id = worker_id): a worker restarted within the
    # session timeout gets its partitions back without a rebalance, but librdkafka never sends
    # LeaveGroup for a static member, so a SIGTERM'd worker's partitions idle for the whole
    # session timeout (measured 6.6 s vs 0.8 s). Off by default: hand-over on shutdown matters
    # more for a GPU fleet that scales in and out than rebalance-free restarts.
    static_membership: bool = False
    # "consumer": KIP-848 with the broker's range assignor (each lane spread evenly over the
    # workers; Kafka 4.0+). "classic": cooperative-sticky (older brokers).
    group_protocol: str = "consumer"
    shutdown_timeout_s: float = 30.0
    # RUNNING and final RequestStatus events on f2p.status.v1 (with the results, exactly once).
    status_events: bool = True
    # The S3 client of the hot path (result uploads, face fetches): "obstore" (Rust, releases
    # the GIL; ~0.2 ms of CPU per small put) or "boto3" (~2 ms). See connectors/object_store.py.
    object_store: str = "obstore"
    metrics_port: int = 0  # 0: no HTTP server
    # Loopback by default; 0.0.0.0 in a container, where probes and Prometheus come from outside.
    metrics_host: str = "127.0.0.1"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Lanes served; the interactive lane first. None: both lanes from Settings.topics.
    lanes: tuple[str, ...] | None = None
    serve_retry_topic: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerConfig:
        """Defaults < ``F2P_WORKER_<FIELD>`` variables < ``overrides`` (CLI flags)."""
        values = env_values(
            cls,
            "F2P_WORKER_",
            skip=("retry", "lanes", "lane_weights"),
            enums={"output_format": ImageFormat},
        )
        retry = {
            f.name: parse_value(
                RETRY_VARIABLES[f.name], os.environ[RETRY_VARIABLES[f.name]], str(f.type)
            )
            for f in dataclasses.fields(RetryPolicy)
            if RETRY_VARIABLES[f.name] in os.environ
        }
        if retry:
            values["retry"] = RetryPolicy(**retry)
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first field (and its variable) that is out of range."""

        def fail(name: str, expectation: str) -> ConfigError:
            return ConfigError(
                f"worker {name} ({_variable(name)}) must be {expectation}, "
                f"got {getattr(self, name)!r}"
            )

        positive = (
            "max_in_flight",
            "prefetch_threads",
            "upload_threads",
            "max_message_bytes",
            "decode_budget_bytes",
            "held_bytes_limit",
            "max_window",
            "stall_timeout_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise fail(name, "positive")
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "transaction_timeout_ms"):
            value = getattr(self, name)
            if value is not None and not 1000 <= value <= 900_000:
                raise fail(name, "between 1000 and 900000 ms")
        if self.max_window > 8192:
            raise fail("max_window", "at most 8192 (it travels in the commit metadata)")
        if self.commit_interval_ms < 0:
            raise fail("commit_interval_ms", ">= 0")
        if self.max_commit_interval_ms < self.commit_interval_ms:
            raise fail("max_commit_interval_ms", ">= commit_interval_ms")
        if not 0 < self.busy_poll_ms <= 50:
            raise fail("busy_poll_ms", "in (0, 50]")
        if self.running_event_delay_ms < 0:
            raise fail("running_event_delay_ms", ">= 0")
        if self.max_batch_wait_ms < 0:
            raise fail("max_batch_wait_ms", ">= 0")
        if not 0 <= self.webp_method <= 6:
            raise fail("webp_method", "between 0 (fastest) and 6 (smallest)")
        if not 0 <= self.png_compress_level <= 9:
            raise fail("png_compress_level", "between 0 (no compression) and 9 (smallest)")
        if self.object_store not in OBJECT_STORES:
            raise fail("object_store", " or ".join(repr(k) for k in OBJECT_STORES))
        if self.group_protocol not in ("consumer", "classic"):
            raise fail("group_protocol", "'consumer' (KIP-848) or 'classic'")
        timeouts = self.kafka_timeouts(brokers=1)
        if timeouts.heartbeat_interval_ms * 3 > timeouts.session_timeout_ms:
            raise fail("heartbeat_interval_ms", "<= session_timeout_ms / 3")
        if any(weight <= 0 for _, weight in self.lane_weights):
            raise ConfigError(f"worker lane weights must be positive, got {self.lane_weights}")
        if self.shutdown_timeout_s < 0:
            raise fail("shutdown_timeout_s", ">= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise fail("metrics_port", "a TCP port (0 for none)")
        # It is the group.instance.id and part of the transactional.id: Kafka's legal characters.
        if not isinstance(self.worker_id, str) or not _WORKER_ID.fullmatch(self.worker_id):
            raise fail("worker_id", "1..200 characters of A-Z a-z 0-9 . _ -")
        retry = self.retry
        if retry.in_place_attempts < 1 or retry.max_attempts < 1:
            raise ConfigError(
                "worker retry.in_place_attempts and retry.max_attempts must be >= 1, got "
                f"{retry.in_place_attempts} and {retry.max_attempts}"
            )
        if retry.in_place_backoff_s < 0 or retry.retry_backoff_s < 0:
            raise ConfigError("worker retry backoffs must be >= 0")

    def kafka_timeouts(self, *, brokers: int) -> KafkaTimeouts:
        """The session, heartbeat and transaction timeouts: the configured ones, else the
        defaults for a cluster of ``brokers`` brokers."""
        defaults = KafkaTimeouts.for_cluster(brokers)
        return KafkaTimeouts(
            session_timeout_ms=self.session_timeout_ms or defaults.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms or defaults.heartbeat_interval_ms,
            transaction_timeout_ms=self.transaction_timeout_ms or defaults.transaction_timeout_ms,
        )


_WORKER_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")

# RetryPolicy field -> environment variable.
RETRY_VARIABLES = {
    "in_place_attempts": "F2P_WORKER_RETRY_IN_PLACE_ATTEMPTS",
    "in_place_backoff_s": "F2P_WORKER_RETRY_IN_PLACE_BACKOFF_S",
    "max_attempts": "F2P_WORKER_RETRY_MAX_ATTEMPTS",
    "retry_backoff_s": "F2P_WORKER_RETRY_BACKOFF_S",
    "max_retry_backoff_s": "F2P_WORKER_RETRY_MAX_BACKOFF_S",
}


def _variable(name: str) -> str:
    return f"F2P_WORKER_{name.upper()}"
