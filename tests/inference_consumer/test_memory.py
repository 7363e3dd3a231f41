"""The worker's byte budgets (``inference_consumer/memory.py``) as plain objects."""

from __future__ import annotations

import threading

import pytest

from inference_consumer.memory import MALLOC_TRIM, DecodeBudget, HeldBytes

MIB = 1024 * 1024


def test_a_decode_larger_than_the_rest_of_the_budget_waits_for_it() -> None:
    budget = DecodeBudget(100 * MIB, trim=None)
    entered = threading.Event()
    with budget.reserve(60 * MIB):

        def second() -> None:
            with budget.reserve(60 * MIB):
                entered.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.2)
        assert budget.used == 60 * MIB
    thread.join(5)
    assert entered.is_set() and budget.used == 0 and budget.peak == 60 * MIB


def test_one_decode_larger_than_the_budget_runs_alone() -> None:
    budget = DecodeBudget(10 * MIB, trim=None)
    with budget.reserve(500 * MIB):
        assert budget.used == 10 * MIB
    assert budget.used == 0


def test_large_decodes_give_their_memory_back_small_ones_do_not() -> None:
    calls: list[int] = []
    budget = DecodeBudget(1024 * MIB, trim_above=32 * MIB, trim=lambda: calls.append(1))
    with budget.reserve(1 * MIB):
        pass
    assert calls == []
    with budget.reserve(192 * MIB):
        assert calls == []  # only once the decode is over
    assert calls == [1] and budget.trims == 1


def test_a_failing_trim_never_fails_the_decode() -> None:
    def broken() -> None:
        raise OSError("no")

    budget = DecodeBudget(1024 * MIB, trim=broken)
    with budget.reserve(64 * MIB):
        pass
    assert budget.used == 0


@pytest.mark.skipif(MALLOC_TRIM is None, reason="not glibc")
def test_malloc_trim_is_callable_here() -> None:
    MALLOC_TRIM()


def test_held_bytes_pause_intake_at_the_limit() -> None:
    held = HeldBytes(10)
    held.add(6)
    assert not held.over()
    held.add(4)
    assert held.over()
    held.release(10)
    assert held.held == 0 and not held.over()
