"""One benchmark run of one implementation: fresh topics, workers, a reader, a publisher.

``Bench`` lives for the whole suite (settings, codec, console, cleanup); ``Bench.session`` gives
a ``Run`` — a private topic set with ``n`` settled worker subprocesses of one implementation, a
``read_committed`` result collector and a load publisher — and tears it down afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.harness import (
    BenchError,
    BenchTopics,
    LoadPublisher,
    RequestFactory,
    ResultCollector,
    balanced_request_ids,
    log_dir,
    make_codec,
)
from benchmarks.workers import WorkerPool, WorkerSpec
from connectors.s3 import make_s3_client
from connectors.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A live run: its settings, workers and instruments."""

    impl: str
    settings: Settings
    group_id: str
    pool: WorkerPool
    collector: ResultCollector
    publisher: LoadPublisher
    assignment: dict[str, list[int]]
    console: Console
    label: str
    stats: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    def check(self, *, allow_dead: tuple = ()) -> None:
        """Raise BenchError if a worker died (other than those in ``allow_dead``)."""
        self.pool.check_alive(allow_dead)

    def progress(self, done: int, total: int) -> None:
        self.console.log(f"{self.label}: {done}/{total} results")

    def publish(self, ids: list[str], factory: RequestFactory, rate: float | None = None) -> None:
        self.publisher.publish(ids, factory, rate=rate)

    def publish_in_background(
        self, ids: list[str], factory: RequestFactory, rate: float | None = None
    ) -> threading.Thread:
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.publisher.publish(ids, factory, rate=rate)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="bench-publish", daemon=True)
        thread.errors = errors  # type: ignore[attr-defined]
        thread.start()
        return thread

    def wait(self, ids: list[str], timeout_s: float, *, allow_dead: tuple = ()) -> bool:
        return self.collector.wait(
            ids, timeout_s, self.progress, check=lambda: self.check(allow_dead=allow_dead)
        )

    def warmup(self, factory: RequestFactory, n: int = 16, timeout_s: float = 90) -> None:
        """Publish ``n`` requests and wait for them: connections, schemas and caches are warm."""
        ids = balanced_request_ids(n)
        self.publish(ids, factory)
        if not self.wait(ids, timeout_s):
            raise BenchError(f"{self.label}: warm-up requests got no results in {timeout_s:.0f} s")

    def stop(self) -> list[dict[str, Any]]:
        """Stop every worker gracefully and return their stats (engine intervals)."""
        if not self.stopped:
            self.stopped = True
            self.stats = self.pool.stop_all()
        return self.stats


class Bench:
    """Suite-wide context: settings, codec, console, a tenant id and everything to clean up."""

    def __init__(
        self, settings: Settings, console: Console, ours_options: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        # WorkerConfig overrides for every run of our worker (tuning experiments).
        self.ours_options = dict(ours_options or {})
        self.console = console
        self.codec = make_codec(settings)
        self.topics = BenchTopics(settings)
        self.run_id = uuid.uuid4().hex[:6]
        self.tenant = f"bench-{self.run_id}"
        self.log_dir: Path = log_dir()

    @contextlib.contextmanager
    def session(
        self,
        tag: str,
        impl: str,
        workers: int,
        *,
        time_scale: float,
        max_batch_size: int = 4,
        options: dict[str, Any] | None = None,
    ) -> Iterator[Run]:
        """``workers`` settled worker subprocesses of ``impl`` on a fresh topic set."""
        settings, suffix = self.topics.fresh(tag)
        group_id = f"f2p-bench-{tag}-{impl}-{uuid.uuid4().hex[:6]}"
        label = f"{tag}/{impl}"
        collector = ResultCollector(settings, self.codec)
        pool = WorkerPool(settings, self.log_dir)
        run: Run | None = None
        try:
            pool.start(
                WorkerSpec(
                    impl=impl,
                    worker_id=f"{tag}-{impl}-{i}-{uuid.uuid4().hex[:4]}",
                    group_id=group_id,
                    topic_suffix=suffix,
                    time_scale=time_scale,
                    max_batch_size=max_batch_size,
                    options={**(self.ours_options if impl == "ours" else {}), **(options or {})},
                )
                for i in range(workers)
            )
            started = time.monotonic()
            assignment = pool.wait_settled(group_id, settings.topics.lanes_batch, workers)
            self.console.log(
                f"{label}: {workers} worker(s) settled in {time.monotonic() - started:.1f} s"
            )
            run = Run(
                impl=impl,
                settings=settings,
                group_id=group_id,
                pool=pool,
                collector=collector,
                publisher=LoadPublisher(settings, self.codec),
                assignment=assignment,
                console=self.console,
                label=label,
            )
            yield run
        finally:
            if run is not None:
                run.stop()
            else:
                pool.stop_all()
            collector.close()

    def cleanup(self) -> None:
        """Delete the suite's topics and the result images of its tenant."""
        self.topics.delete_all()
        s3 = make_s3_client(self.settings)
        for bucket in (self.settings.results_bucket, self.settings.inputs_bucket):
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"tenants/{self.tenant}/"
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
