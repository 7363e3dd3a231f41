"""The output pool counts the outputs it holds: the loop waits for their completions while any
are held (``Handler.finishing``), and must not wait for completions that are not coming."""

from __future__ import annotations

import threading
import time

import pytest

from inference_consumer.generation import OutputPool


def settled(pool: OutputPool) -> int:
    """``in_flight`` once the pool's done-callbacks have run (they run just after ``result``)."""
    deadline = time.monotonic() + 30
    while pool.in_flight and time.monotonic() < deadline:
        time.sleep(0.001)
    return pool.in_flight


def test_in_flight_counts_an_output_from_submit_until_it_has_run() -> None:
    pool = OutputPool(2)
    gate = threading.Event()
    try:
        assert pool.in_flight == 0
        futures = [pool.submit(gate.wait, 30) for _ in range(3)]  # one waits for a thread
        assert pool.in_flight == 3
        gate.set()
        for future in futures:
            future.result(timeout=30)
        assert settled(pool) == 0
    finally:
        gate.set()
        pool.shutdown()


def test_a_failing_output_and_a_refused_submit_are_not_counted_after() -> None:
    pool = OutputPool(1)

    def boom() -> None:
        raise ValueError("output failed")

    future = pool.submit(boom)
    with pytest.raises(ValueError):
        future.result(timeout=30)
    assert settled(pool) == 0
    pool.shutdown()
    with pytest.raises(RuntimeError):  # after shutdown
        pool.submit(print)
    assert pool.in_flight == 0
