"""Budgets per program and per run: a wall clock that counts primitive waits, and bytes of
answer + trace. Each is a property of a mixed run: the program that overspends is blamed
with an error that names the budget, its neighbours answer correctly (issue 14)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from viprog.executor import Executor, Job
from viprog.primitives import Profile

IMAGE = np.zeros((20, 30, 3), np.uint8)


class Busy(Profile):
    """find costs 20 ms per batch (a model kept busy) and answers as many boxes as asked."""

    name = "busy"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def find(self, calls: list) -> list:
        self.calls += len(calls)
        time.sleep(0.02)
        return [[[0, 0, 2, 2]] * min(len(c.args[0]), 400) for c in calls]


def program(*body: str) -> str:
    return "def execute_command(image):\n" + "\n".join("    " + line for line in body) + "\n"


def innocents(n: int) -> list[Job]:
    return [Job(program(f"return len(ImagePatch(image).find('ab')) + {i}"), f"i{i}", IMAGE) for i in range(n)]


FLOOD = program("p = ImagePatch(image)", "n = 0", "for i in range(1000):",
                "    n += len(p.find(str(i) + 'x' * 16000))", "return n")


def test_a_thousand_calls_of_16_kb_arguments_hit_the_wall_clock_cap() -> None:
    profile = Busy()
    with Executor(profile, workers=2, timeout=1.0, wall_timeout=3.0) as ex:
        start = time.monotonic()
        results = ex.run_many([Job(FLOOD, "img", IMAGE), Job(FLOOD, "img2", IMAGE), *innocents(20)])
        seconds = time.monotonic() - start
    for flood in results[:2]:
        assert flood.error_kind == "timeout" and "wall_timeout" in flood.error, flood.error
        assert len(flood.dumps()) <= 1_048_576 + 4096
    assert [r.answer for r in results[2:]] == [2 + i for i in range(20)]
    assert seconds < 3.0 + 5.0 and profile.calls < 600, "the cap bounds the model time a flood takes"


def test_waiting_for_the_run_token_is_not_charged_to_the_wall_clock() -> None:
    # eight programs that each compute ~0.25 s share one worker: the last waits ~2 s for
    # the run token (its neighbours' doing), more than its wall cap, and still answers
    busy = program("x = 0", "for i in range(10**6):", "    x += 1", "return len(ImagePatch(image).find('a')) + x")
    with Executor(Busy(), workers=1, slots=8, timeout=3.0, wall_timeout=3.0) as ex:
        results = ex.run_many([Job(busy, f"i{i}", IMAGE) for i in range(8)])
    assert [r.error for r in results] == [None] * 8 and [r.answer for r in results] == [1 + 10**6] * 8


def test_wall_clock_cap_stops_a_program_waiting_on_a_slow_primitive() -> None:
    class Slow(Busy):
        def find(self, calls: list) -> list:
            if any(c.args[0] == "slow" for c in calls):
                time.sleep(2.0)
            return super().find(calls)

    with Executor(Slow(), workers=1, timeout=1.0, wall_timeout=1.0) as ex:
        start = time.monotonic()
        waiting = ex.run(Job(program("return len(ImagePatch(image).find('slow'))"), "img", IMAGE))
        seconds = time.monotonic() - start
        time.sleep(1.2)  # the slow batch ends (waiting behind it counts against the wall clock too)
        assert ex.run_many(innocents(4))[3].answer == 5, "the worker must go on serving"
    assert waiting.error_kind == "timeout" and "wall_timeout" in waiting.error and seconds < 1.9


def test_answer_and_trace_past_the_result_budget_are_an_output_error() -> None:
    many = program("p = ImagePatch(image)", "for i in range(400):", "    p.find('x' * 300 + str(i))", "return 1")
    with Executor(Busy(), workers=1, timeout=5.0, max_result_bytes=65536) as ex:
        results = ex.run_many([Job(many, "img", IMAGE), Job(program("return 'y' * 70000"), "img", IMAGE),
                               *innocents(6)])
    for big in results[:2]:
        assert big.error_kind == "output" and "max_result_bytes" in big.error and big.answer is None
        assert len(big.dumps()) <= 65536 + 1024
    assert results[0].trace and results[0].trace[0]["args"][0].startswith("xxx"), "the leading calls are kept"
    assert [r.answer for r in results[2:]] == [2 + i for i in range(6)]


def test_trace_of_a_program_stopped_while_it_waits_stays_within_the_result_budget() -> None:
    # the parent stops it at its wall cap, waiting on a slow primitive: the parent's trace is its result
    class Slow(Busy):
        def simple_query(self, calls: list) -> list:
            time.sleep(2.0)
            return ["late" for _ in calls]

    flood = program("p = ImagePatch(image)", "for i in range(8):", "    p.find(str(i) + 'x' * 16000)",
                    "return p.simple_query('q')")
    with Executor(Slow(), workers=1, timeout=1.0, wall_timeout=1.0, max_result_bytes=65536) as ex:
        stopped = ex.run(Job(flood, "img", IMAGE))
    assert stopped.error_kind == "timeout" and "wall_timeout" in stopped.error, stopped.error
    assert 1 <= len(stopped.trace) < 8 and len(stopped.dumps()) <= 65536 + 1024


def test_results_past_the_run_budget_are_dropped_with_an_output_error() -> None:
    jobs = [Job(program(f"return '{k}' * 30000"), "img", IMAGE) for k in range(10)]
    with Executor(Busy(), workers=1, slots=1, timeout=5.0, max_result_bytes=65536, max_run_bytes=100_000) as ex:
        results = ex.run_many(jobs)
        again = ex.run_many(jobs[:2])  # the budget is per run
    kept = [r for r in results if r.ok]
    assert len(kept) == 3 and [r.answer for r in kept] == [str(k) * 30000 for k in range(3)]
    assert all(r.error_kind == "output" and "max_run_bytes" in r.error for r in results[3:])
    assert sum(len(json.dumps(r.answer)) for r in kept) <= 100_000
    assert [r.ok for r in again] == [True, True]


@pytest.mark.parametrize("options", [{"wall_timeout": 0.5, "timeout": 1.0}, {"max_result_bytes": 100},
                                     {"max_result_bytes": 4096, "max_run_bytes": 1000}])
def test_inconsistent_budgets_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        Executor(Busy(), **options)
