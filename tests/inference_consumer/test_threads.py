"""OS thread names of the worker's stages, and their CPU by stage (Linux)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from inference_consumer.metrics import WorkerMetrics
from inference_consumer.threads import (
    name_pool_thread,
    name_this_thread,
    stage_of,
    stage_pool,
    thread_cpu_by_stage,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")


def _os_name(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def _in_thread(target: object) -> None:
    thread = threading.Thread(target=target)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def test_a_stage_thread_gets_its_os_name_and_keeps_its_python_name() -> None:
    seen: dict[str, str] = {}

    def body() -> None:
        name_this_thread("engine")
        me = threading.current_thread()
        seen["os"], seen["python"] = _os_name(me.native_id or 0), me.name

    _in_thread(body)
    assert seen["os"] == "f2p-engine"
    assert not seen["python"].startswith("f2p-")


def test_pool_threads_are_numbered_like_their_python_names() -> None:
    with ThreadPoolExecutor(
        2, "output", initializer=name_pool_thread, initargs=("output",)
    ) as pool:
        names = {
            pool.submit(lambda: _os_name(threading.current_thread().native_id or 0)).result()
            for _ in range(4)
        }
    assert names <= {"f2p-output_0", "f2p-output_1"} and names


def test_a_stage_pool_has_every_thread_running_and_named_when_returned() -> None:
    pool = stage_pool("poolcheck", 3)  # a name no other test's threads carry
    try:
        names = sorted(
            name
            for task in Path("/proc/self/task").iterdir()
            if (name := (task / "comm").read_text().strip()).startswith("f2p-poolcheck")
        )
        assert names == ["f2p-poolcheck_0", "f2p-poolcheck_1", "f2p-poolcheck_2"]
        assert pool.submit(lambda: 42).result(timeout=30) == 42
    finally:
        pool.shutdown()


def test_names_are_cut_to_what_linux_keeps_and_map_back_to_their_stage() -> None:
    seen: list[str] = []

    def body() -> None:
        name_this_thread("prefetch", "_12345678")
        seen.append(_os_name(threading.current_thread().native_id or 0))

    _in_thread(body)
    assert seen == ["f2p-prefetch_12"]  # 15 bytes
    assert stage_of(seen[0]) == "prefetch"
    assert stage_of("f2p-output_3") == "output"
    assert stage_of("f2p-loop") == "loop"
    assert stage_of("python3") is None
    assert stage_of("rdk:main") is None


def _burn(seconds: float) -> None:
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


def test_cpu_is_counted_under_the_stage_of_the_thread_that_spent_it() -> None:
    before = thread_cpu_by_stage()
    release = threading.Event()

    def busy_output_thread() -> None:
        name_this_thread("output", "_9")
        _burn(0.3)
        release.wait(10)  # alive while measured: threads that ended are not counted

    thread = threading.Thread(target=busy_output_thread)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while thread_cpu_by_stage()["output"] - before["output"] < 0.25:
            assert time.monotonic() < deadline, "the output thread's CPU never showed"
            time.sleep(0.05)
        after = thread_cpu_by_stage()
    finally:
        release.set()
        thread.join()
    assert after["prefetch"] - before["prefetch"] < 0.1
    assert after["engine"] - before["engine"] < 0.1


def test_the_main_thread_is_counted_only_under_the_stage_it_is_said_to_run() -> None:
    _burn(0.1)  # this test runs on pytest's main thread
    assert threading.current_thread() is threading.main_thread()
    assert thread_cpu_by_stage()["loop"] < thread_cpu_by_stage(main_thread_stage="loop")["loop"]


def test_the_worker_exports_its_cpu_by_stage() -> None:
    metrics = WorkerMetrics("w-1")
    text = generate_latest(metrics.registry).decode()
    for stage in ("loop", "prefetch", "engine", "output"):
        assert f'f2p_worker_thread_cpu_seconds_total{{stage="{stage}"}}' in text
