"""Helpers for the chaos tests: worker subprocesses, a paced publisher, exactly-once scans.

Workers run as real ``f2p worker`` processes (``python -m f2p_cli worker``) so that ``kill -9``
is a real crash: no ``finally``, no graceful leave, an open transaction left behind.
"""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException, TopicPartition

from connectors.kafka import make_consumer, make_producer
from connectors.kafka_retry import retry_kafka
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from f2p_errors import F2PError
from infra.stack.config import load_stack_config
from infra.stack.exceptions import PortInUse
from infra.stack.launcher import COMPONENTS, stack_up
from infra.stack.processes import ensure_port_free
from infra.stack.state import read_state
from schemas.codec import AvroCodec
from schemas.records import DeadLetter, GenerationRequest, GenerationResult

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def topic_suffix(settings: Settings) -> str:
    """The suffix the ``pipeline`` fixture appended to every topic name."""
    return settings.topics.results.removeprefix("f2p.results.v1")


# -- worker processes -----------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One ``f2p worker`` (or ``f2p streams admission``) subprocess; every (re)start logs to
    its own file."""

    worker_id: str
    args: list[str]
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    command: tuple[str, ...] = ("worker", "--worker-id")

    def start(self) -> None:
        self.starts += 1
        log_file = self.log_dir / f"{self.worker_id}.{self.starts}.log"
        self.logs.append(log_file)
        with log_file.open("wb") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "f2p_cli", *self.command, self.worker_id, *self.args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: the crash we test. Reaps the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 40) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after ``timeout_s``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def booted(self) -> bool:
        """The current process got past start-up (signal handlers installed, consumer created)."""
        log = self.logs[-1] if self.logs else None
        if log is None or not log.exists():
            return False
        text = log.read_text(errors="replace")
        return "worker started" in text or "admission started" in text


class WorkerFleet:
    """Sim workers of one consumer group on the pipeline's private topics."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        group_id: str,
        sim_time_scale: float,
        extra_env: dict[str, str] | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "F2P_TOPIC_SUFFIX": topic_suffix(settings),
            "F2P_WORKER_GROUP_ID": group_id,
            "F2P_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.args = ["--engine", "sim", "--sim-time-scale", str(sim_time_scale), *extra_args]
        self.workers: dict[str, WorkerProcess] = {}

    def start(self, worker_id: str, env: dict[str, str] | None = None) -> WorkerProcess:
        """(Re)start ``worker_id``; ``env`` (first start only) adds to the fleet's variables."""
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = WorkerProcess(worker_id, self.args, {**self.env, **(env or {})}, self.log_dir)
            self.workers[worker_id] = worker
        worker.start()
        return worker

    def start_admission(self, instance_id: str, group_id: str) -> WorkerProcess:
        """(Re)start an admission instance in ``group_id`` (same process bookkeeping)."""
        process = self.workers.get(instance_id)
        if process is None:
            env = {**self.env, "F2P_ADMISSION_GROUP_ID": group_id}
            process = WorkerProcess(
                instance_id,
                [],
                env,
                self.log_dir,
                command=("streams", "admission", "--instance-id"),
            )
            self.workers[instance_id] = process
        process.start()
        return process

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.alive()]

    def stop_all(self, boot_timeout_s: float = 60) -> dict[str, int | None]:
        """Graceful stop of every running worker, in parallel; their exit codes by worker id.

        A worker still starting up is given time to boot first: SIGTERM before its handler is
        installed would kill it, and that is not the shutdown under test.
        """
        wait_until(lambda: all(w.booted() for w in self.alive()), boot_timeout_s, interval_s=0.2)
        codes: dict[str, int | None] = {}
        threads = [
            threading.Thread(target=lambda w=w: codes.__setitem__(w.worker_id, w.stop()))
            for w in self.alive()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return codes

    def kill_all(self) -> None:
        for w in self.workers.values():
            if w.alive():
                w.kill9()

    def died(self, process_ids: Iterable[str]) -> dict[str, int | None]:
        """Exit codes of those of ``process_ids`` that are no longer running (a negative code is
        the signal that ended it)."""
        return {
            pid: self.workers[pid].proc.returncode  # type: ignore[union-attr]
            for pid in process_ids
            if not self.workers[pid].alive()
        }

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of each process's own log lines: librdkafka's connection noise
        (one line per refused connect while a broker is down) is left out, or it fills the
        tail and hides what the process did (CI's output is cut, too)."""
        out = []
        for w in self.workers.values():
            for p in w.logs[-2:]:
                if p.exists():
                    text = [
                        line
                        for line in p.read_text(errors="replace").splitlines()
                        if not _LIBRDKAFKA_NOISE.search(line)
                    ][-lines:]
                    out.append(f"===== {p.name} =====\n" + "\n".join(text))
        return "\n".join(out)

    def grep(self, needle: str) -> int:
        """How many log lines of all workers contain ``needle``."""
        return sum(
            line.count(needle) > 0
            for w in self.workers.values()
            for p in w.logs
            if p.exists()
            for line in p.read_text(errors="replace").splitlines()
        )


_LIBRDKAFKA_NOISE = re.compile(r"librdkafka: (FAIL|REQTMOUT|ADDOFFSETS|GETPID|COORD|SESSTMOUT) ")


# -- the stack's components ----------------------------------------------------------------------


def component_pid(name: str) -> int:
    """The recorded pid of a component of the session's stack."""
    return read_state(load_stack_config().state_file).components[name].process.pid


def kill_component(name: str, sig: signal.Signals = signal.SIGKILL) -> None:
    """Kill a component of the session's stack and wait until it is gone.

    Gone means its ports are free again: a multi-threaded process (the JVM) shows as a zombie
    while its other threads still hold the sockets, and ``stack_up`` would find a port taken.
    """
    config = load_stack_config()
    record = read_state(config.state_file).components[name].process
    component = next(c for c in COMPONENTS if c.name == name)(config, None)
    os.kill(record.pid, sig)

    def released() -> bool:
        if record.is_alive():
            return False
        try:
            for port in component.ports().values():
                ensure_port_free(port, component=name)
        except PortInUse:
            return False
        return True

    met, _ = wait_until(released, 30, interval_s=0.05)
    assert met, f"{name} (pid {record.pid}) did not exit"


def ensure_stack_up(timeout_s: float = 120) -> None:
    """Leave the session's stack running whatever happened (a port may still be closing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stack_up(load_stack_config())
            return
        except PortInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- publishing -----------------------------------------------------------------------------------


def lane_topic(settings: Settings, request: GenerationRequest) -> str:
    """The ingress topic of ``request``'s lane (admission reads it)."""
    t = settings.topics
    return t.requests_interactive if request.lane.value == "INTERACTIVE" else t.requests_batch


@dataclass
class Submission:
    """One produce of a request: the original or a duplicate submission of the same bytes."""

    request: GenerationRequest
    duplicate: bool


def schedule_with_duplicates(
    requests: list[GenerationRequest], duplicates: int, rng: random.Random, max_gap: int = 600
) -> list[Submission]:
    """All requests in order, plus ``duplicates`` re-submissions of earlier request_ids, each
    placed 1..``max_gap`` positions after its original (some in flight, some long finished)."""
    slots: list[tuple[float, Submission]] = [
        (i, Submission(r, False)) for i, r in enumerate(requests)
    ]
    originals = rng.sample(range(len(requests)), duplicates)
    for i in originals:
        slots.append((i + rng.randint(1, max_gap) + 0.5, Submission(requests[i], True)))
    slots.sort(key=lambda s: s[0])
    return [s for _, s in slots]


class PacedPublisher(threading.Thread):
    """Publishes submissions at ``rate_per_s`` on a background thread, recording partitions."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        submissions: list[Submission],
        rate_per_s: float,
    ) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        self.settings = settings
        self.submissions = submissions
        self.rate = rate_per_s
        # Encode once per request: a duplicate submission is the very same bytes again.
        self.encoded: dict[str, tuple[str, bytes]] = {}
        for s in submissions:
            rid = s.request.request_id
            if rid not in self.encoded:
                topic = lane_topic(settings, s.request)
                self.encoded[rid] = (topic, codec.encode(topic, s.request))
        self.partition_of: dict[str, tuple[str, int]] = {}
        # request_id -> where the broker acknowledged each of its produces (topic[p]@offset):
        # the first line of a missing request's trail.
        self.delivered: dict[str, list[str]] = {}
        self.published = 0
        self.errors: list[str] = []
        self.finished_at: float | None = None

    def run(self) -> None:
        producer = make_producer(self.settings, client_id="chaos-publisher")
        # Duplicates come the way other teams' clients send: librdkafka's default partitioner
        # (CRC32 / random), no key, or the other ingress topic.
        other = make_producer(
            self.settings, client_id="chaos-other-client", partitioner="consistent_random"
        )

        def on_delivery(rid: str, err, msg) -> None:
            if err is not None:
                self.errors.append(str(err))
                return
            self.delivered.setdefault(rid, []).append(
                f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            )

        t = self.settings.topics
        started = time.monotonic()
        duplicates = 0
        for n, s in enumerate(self.submissions):
            due = started + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rid = s.request.request_id
            topic, value = self.encoded[rid]
            delivered = functools.partial(on_delivery, rid)
            if not s.duplicate:
                producer.produce(topic, key=rid.encode(), value=value, on_delivery=delivered)
            else:
                duplicates += 1
                way = duplicates % 3
                key = None if way == 1 else rid.encode()
                if way == 2:
                    topic = t.requests_batch if topic == t.requests_interactive else (
                        t.requests_interactive)  # fmt: skip
                other.produce(topic, key=key, value=value, on_delivery=delivered)
                other.poll(0)
            producer.poll(0)
            self.published += 1
        remaining = producer.flush(60) + other.flush(60)
        if remaining:
            self.errors.append(f"{remaining} messages not delivered")
        self.finished_at = time.monotonic()


def publish_all(settings: Settings, codec: AvroCodec, requests: list[GenerationRequest]) -> None:
    """Produce every request to its lane at once; wait for delivery."""
    publisher = PacedPublisher(
        settings, codec, [Submission(r, False) for r in requests], rate_per_s=1e9
    )
    publisher.run()
    assert not publisher.errors, publisher.errors


# -- scanning -------------------------------------------------------------------------------------


def scan_results(settings: Settings, codec: AvroCodec) -> list[GenerationResult]:
    """Every committed result (read_committed, from the beginning)."""
    return [
        codec.decode(settings.topics.results, m.value())
        for m in read_to_end(settings, settings.topics.results, timeout_s=60)
    ]


def scan_dlq(settings: Settings, codec: AvroCodec) -> list[DeadLetter]:
    return [
        codec.decode(settings.topics.dlq, m.value())
        for m in read_to_end(settings, settings.topics.dlq, timeout_s=60)
    ]


def group_caught_up(settings: Settings, group_id: str, topics: Iterable[str] | None = None) -> bool:
    """True when the group's committed offset is at the high watermark of every partition of
    ``topics`` (default: the workers' lanes and the retry topic): lag 0, nothing left. (The
    loop commits past trailing transaction markers, so lag really reaches 0.)"""
    return not group_lag(settings, group_id, topics)


def group_lag(
    settings: Settings, group_id: str, topics: Iterable[str] | None = None
) -> dict[tuple[str, int], tuple[int, int]]:
    """Partitions whose committed offset is short of the high watermark: (committed, high)."""
    t = settings.topics
    topics = list(topics or [*t.worker_lanes.values(), t.retry])
    consumer = make_consumer(settings, group_id)  # never subscribes: joins nothing
    try:
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                if high > 0:
                    ends[(topic, p)] = high
        if not ends:
            return {}
        committed = consumer.committed([TopicPartition(*tp) for tp in ends], timeout=10)
        return {
            (tp.topic, tp.partition): (tp.offset, ends[(tp.topic, tp.partition)])
            for tp in committed
            if tp.offset < ends[(tp.topic, tp.partition)]
        }
    finally:
        consumer.close()


@dataclass
class ExactlyOnceReport:
    """What the final read_committed scan found."""

    unique: int
    results: int
    missing: set[str]
    doubled: dict[str, int]
    unexpected: set[str]
    statuses: Counter
    dead_letters: int

    def summary(self) -> str:
        return (
            f"unique requests={self.unique} results={self.results} missing={len(self.missing)} "
            f"twice={len(self.doubled)} unexpected={len(self.unexpected)} "
            f"statuses={dict(self.statuses)} dlq={self.dead_letters}"
        )


def exactly_once_report(
    settings: Settings, codec: AvroCodec, expected: set[str]
) -> tuple[ExactlyOnceReport, list[GenerationResult]]:
    results = scan_results(settings, codec)
    counts = Counter(r.request_id for r in results)
    report = ExactlyOnceReport(
        unique=len(expected),
        results=len(results),
        missing=expected - set(counts),
        doubled={rid: n for rid, n in counts.items() if n > 1},
        unexpected=set(counts) - expected,
        statuses=Counter(str(r.status) for r in results),
        dead_letters=len(scan_dlq(settings, codec)),
    )
    return report, results


def wait_until(
    condition, timeout_s: float, *, interval_s: float = 0.5, on_tick=None
) -> tuple[bool, float]:
    """Poll ``condition`` until true or timeout; (met, seconds waited)."""
    started = time.monotonic()
    while True:
        if on_tick is not None:
            on_tick()
        if condition():
            return True, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            return False, time.monotonic() - started
        time.sleep(interval_s)


def finish(
    fleet: WorkerFleet,
    settings,
    codec,
    expected: set[str],
    group_id: str,
    timeout_s: float,
    worker_ids: list[str],
    *,
    admission_group: str | None = None,
    delivered: dict[str, list[str]] | None = None,
    never_written: set[str] | None = None,
) -> float:
    """Wait for every result and an empty backlog (workers' and admission's lag 0), check that
    none of ``worker_ids`` died on its own, then stop them gracefully (SIGTERM: drain, commit,
    exit 0).

    With ``delivered`` (the publisher's delivery reports) and ``never_written``, a request that
    has no result because the broker never wrote it (acknowledged without an offset, in no
    ingress partition: librdkafka#4134) is added to ``never_written`` with a warning instead of
    failing the wait; the caller checks exactly-once over the others."""
    t = settings.topics
    admission_topics = [*t.request_lanes, t.admission_repartition]

    def done() -> bool:
        try:
            return (
                expected <= {r.request_id for r in scan_results(settings, codec)}
                and group_caught_up(settings, group_id)
                and (
                    admission_group is None
                    or group_caught_up(settings, admission_group, admission_topics)
                )
            )
        except (KafkaException, F2PError):  # a broker just restarted may still elect leaders
            return False

    met, waited = wait_until(done, timeout_s, interval_s=1.0)
    if not met:
        seen = {r.request_id for r in scan_results(settings, codec)}
        lag = {
            "workers": group_lag(settings, group_id),
            "admission": admission_group and group_lag(settings, admission_group, admission_topics),
        }
        missing = sorted(expected - seen)
        lost = _acked_but_never_written(settings, missing, delivered)
        if never_written is not None and lost and set(missing) == lost and not any(lag.values()):
            # The pipeline cannot answer a request that is not in its input: these were
            # acknowledged to the publisher without an offset and are in no partition of the
            # ingress topics, committed or not (librdkafka's idempotent producer under a frozen
            # broker, confluentinc/librdkafka#4134). Everything that was written got its result.
            warnings.warn(
                f"{len(lost)} of {len(expected)} requests were acknowledged to the publisher "
                "without an offset and never written (confluentinc/librdkafka#4134):\n"
                f"{missing_trail(settings, sorted(lost)[:3], delivered)}",
                stacklevel=2,
            )
            never_written.update(lost)
            met = True
    if not met:
        raise AssertionError(
            f"not all results within {timeout_s} s: {len(missing)} of {len(expected)} "
            f"missing; lagging (committed, end): {lag}\n"
            f"{missing_trail(settings, missing[:3], delivered)}\n{fleet.log_tail()}"
        )
    died = fleet.died(worker_ids)
    assert not died, f"workers died on their own (exit codes): {died}\n{fleet.log_tail()}"
    codes = fleet.stop_all()
    assert all(code == 0 for code in codes.values()), f"{codes}\n{fleet.log_tail()}"
    return waited


def _acked_but_never_written(
    settings: Settings, request_ids: list[str], delivered: dict[str, list[str]] | None
) -> set[str]:
    """Those of ``request_ids`` whose every delivery report came without an offset and that no
    partition of the ingress topics holds, read uncommitted to its end (empty when any could
    not be read: an absence there proves nothing)."""
    if delivered is None:
        return set()
    candidates = [
        rid
        for rid in request_ids
        if delivered.get(rid) and all(place.endswith("@None") for place in delivered[rid])
    ]
    if not candidates:
        return set()
    unread: list[str] = []
    found = _find_in_topics(
        settings,
        list(settings.topics.request_lanes),
        {rid.encode(): rid for rid in candidates},
        "read_uncommitted",
        unread,
    )
    if unread:
        return set()
    return {rid for rid in candidates if not found.get(rid)}


def missing_trail(
    settings: Settings,
    request_ids: list[str],
    delivered: dict[str, list[str]] | None = None,
) -> str:
    """Where each of ``request_ids`` was published (``delivered``: the publisher's delivery
    reports) and shows up in every pipeline topic, committed or not: the first thing to know
    about a request without a result (which hop dropped it). Topics or partitions the scan could
    not read to their end are named: an absence there proves nothing."""
    t = settings.topics
    topics = [
        *t.request_lanes, t.admission_repartition, t.admission_dedupe,
        *t.worker_lanes.values(), t.retry, t.status, t.results, t.dlq,
    ]  # fmt: skip
    wanted = {rid.encode(): rid for rid in request_ids}
    lines: dict[str, list[str]] = {rid: [] for rid in request_ids}
    if delivered is not None:
        for rid in request_ids:
            lines[rid].append(f"  published: {', '.join(delivered.get(rid, [])) or '-'}")
    unread: list[str] = []
    for isolation in ("read_committed", "read_uncommitted"):
        found = _find_in_topics(settings, topics, wanted, isolation, unread)
        for rid, places in found.items():
            lines[rid].append(f"  {isolation}: {', '.join(places) or '-'}")
    trail = "\n".join(f"trail of {rid}:\n" + "\n".join(lines[rid]) for rid in request_ids)
    return trail + (f"\nnot read to the end: {'; '.join(unread)}" if unread else "")


def _find_in_topics(
    settings: Settings,
    topics: list[str],
    wanted: dict[bytes, str],
    isolation: str,
    unread: list[str],
) -> dict[str, list[str]]:
    """topic[partition]@offset of every message whose key or value holds a wanted id; what
    could not be read to its end is added to ``unread``."""
    found: dict[str, list[str]] = {rid: [] for rid in wanted.values()}
    consumer = make_consumer(
        settings, f"trail-{random.getrandbits(40):x}", isolation_level=isolation
    )
    try:
        for topic in topics:
            try:
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                ends = {  # retried: leaders still move minutes after a broker came back
                    p: retry_kafka(
                        f"watermarks of {topic}[{p}]",
                        functools.partial(
                            consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=10
                        ),
                        deadline_s=10,  # per partition: the trail is read only when a test fails
                    )[1]
                    for p in meta.partitions
                }
            except KafkaException as exc:
                unread.append(f"{topic} ({isolation}): {exc}")
                continue
            todo = {p for p, end in ends.items() if end > 0}
            if not todo:
                continue
            consumer.assign([TopicPartition(topic, p, 0) for p in todo])
            deadline = time.monotonic() + 30
            while todo and time.monotonic() < deadline:
                for m in consumer.consume(1000, timeout=0.2):
                    if m.error() is not None:
                        continue
                    blob = (m.key() or b"") + b"|" + (m.value() or b"")
                    for raw, rid in wanted.items():
                        if raw in blob:
                            found[rid].append(f"{topic}[{m.partition()}]@{m.offset()}")
                positions = consumer.position([TopicPartition(topic, p) for p in todo])
                todo = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
            if todo:
                unread.append(f"{topic} {sorted(todo)} ({isolation}): not at the end in 30 s")
            consumer.unassign()
    finally:
        consumer.close()
    return found
