"""Blame stays with its program: hostile programs among innocent ones that share workers.

Each test is a property of a mixed run: the innocent neighbours of a hostile program all
answer correctly, and the hostile program is blamed for its own doing (issue 14)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from viprog.executor import Executor, Job
from viprog.primitives import Profile

IMAGE = np.zeros((20, 30, 3), np.uint8)


class Fake(Profile):
    """find answers as many boxes as the word has letters, a little later each batch."""

    name = "fake"

    def find(self, calls: list) -> list:
        time.sleep(0.01)
        return [[[0, 0, 2, 2]] * (len(c.args[0]) % 5) for c in calls]


def innocent(i: int) -> Job:
    """Allocates (so the collector runs in its turn), calls a primitive, and computes its answer."""
    word = "abcd"[: 1 + i % 4]
    source = ("def execute_command(image):\n"
              "    junk = [[j] for j in range(20000)]\n"
              f"    n = len(ImagePatch(image).find({word!r}))\n"
              f"    return n * 1000 + {i} + len(junk) - 20000\n")
    return Job(source, f"img{i % 3}", IMAGE)


def expected(i: int) -> int:
    return (1 + i % 4) * 1000 + i


def mix(hostile: list[str], innocents: int, every: int) -> tuple[list[Job], list[int], list[int]]:
    """Innocent jobs with a hostile one after every `every`: (jobs, hostile positions, innocent ids)."""
    jobs, bad, good = [], [], []
    h = 0
    for i in range(innocents):
        jobs.append(innocent(i))
        good.append(i)
        if i % every == every - 1 and h < len(hostile):
            bad.append(len(jobs))
            jobs.append(Job(hostile[h], "img0", IMAGE))
            h += 1
    return jobs, bad, good


def assert_innocents_answer(results: list, bad: list[int], good: list[int]) -> None:
    answers = [r for k, r in enumerate(results) if k not in bad]
    wrong = [(i, r.error_kind, r.error) for i, r in zip(good, answers) if r.answer != expected(i)]
    assert not wrong, f"{len(wrong)} innocent programs affected: {wrong[:3]}"


# -- a generator's finally block, kept alive in a cycle past the young generations ---------
GENERATOR = ("def gen(box):\n    try:\n        yield 1\n    finally:\n{payload}\n"
             "def execute_command(image):\n"
             "    box = []\n    g = gen(box)\n    box.append(g)\n    next(g)\n"
             "    keep = [[j] for j in range(50000)]\n"  # collections move the cycle to the oldest generation
             "    return len(keep)\n")
PAYLOADS = {
    "policy": "        try:\n            getattr(box, '_x')\n        except Exception:\n            pass",
    "timeout": "        while True:\n            pass",
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_generator_finally_in_a_cycle_is_blamed_on_its_own_program(kind: str) -> None:
    hostile = [GENERATOR.format(payload=PAYLOADS[kind])] * 3
    jobs, bad, good = mix(hostile, 24, 8)
    with Executor(Fake(), workers=1, slots=16, timeout=1.0, memory_mb=512) as ex:
        results = ex.run_many(jobs)
    assert_innocents_answer(results, bad, good)
    assert [results[k].error_kind for k in bad] == [kind] * 3, [results[k].error for k in bad]


def test_generator_finally_runs_in_its_own_turn_when_the_program_ends_normally() -> None:
    # a finally block that only computes is part of its program's run: it may not fail it
    source = GENERATOR.format(payload="        box.append(sum(range(1000)))")
    with Executor(Fake(), workers=1, timeout=2.0) as ex:
        results = ex.run_many([Job(source, "img0", IMAGE)] + [innocent(i) for i in range(6)])
    assert results[0].answer == 50000 and [r.answer for r in results[1:]] == [expected(i) for i in range(6)]


# -- a C-stack overflow kills its worker (SIGSEGV) --------------------------------------------
CRASHERS = [
    "def execute_command(image):\n    t = ()\n    for i in range(300000):\n        t = (t,)\n    return hash(t)\n",
    ("def execute_command(image):\n    m = [1]\n    for i in range(300000):\n        m = map(abs, m)\n"
    "    return list(m)\n"),
]


def test_stack_overflow_is_blamed_alone_and_its_neighbours_answer() -> None:
    hostile = [CRASHERS[k % 2] for k in range(9)]
    jobs, bad, good = mix(hostile, 72, 8)
    with Executor(Fake(), workers=2, timeout=5.0, memory_mb=512) as ex:  # 64 slots: all in flight at once
        pids = ex.worker_pids()
        results = ex.run_many(jobs)
        assert ex.run(innocent(5)).answer == expected(5), "the pool must serve the next program"
        assert len(ex.worker_pids()) == 2 and ex.worker_pids() != pids
    assert_innocents_answer(results, bad, good)
    for k in bad:
        assert results[k].error_kind == "crash" and "SIGSEGV" in results[k].error, results[k]


# -- a program that holds most of its worker's memory_mb while it waits for primitives ------
MB = 2**20
HOARDER = ("def execute_command(image):\n"
           f"    held = 'h' * {440 * MB}\n"
           "    for k in range(30):\n"  # waits for primitives, the run token free, its memory held
           "        ImagePatch(image).find('w' * (k + 1))\n"
           f"    more = 'm' * {120 * MB}\n"  # 560 MB: past memory_mb=512 even alone
           "    return len(held) + len(more)\n")


def hungry(i: int) -> Job:
    """Waits for three primitive results (the hoarder has its memory by then), then needs 120 MB."""
    source = ("def execute_command(image):\n"
              f"    n = len(ImagePatch(image).find('abcd'[:1 + {i} % 4]))\n"
              "    for k in range(2):\n"
              "        ImagePatch(image).find('q' * (k + 6))\n"
              f"    junk = 'j' * {120 * MB}\n"
              f"    return n * 1000 + {i} + len(junk) - {120 * MB}\n")
    return Job(source, "img0", IMAGE)


def test_memory_held_by_a_neighbour_is_not_blamed_on_the_innocent() -> None:
    jobs = [Job(HOARDER, "img0", IMAGE)] + [hungry(i) for i in range(4)]
    with Executor(Fake(), workers=1, slots=8, timeout=5.0, memory_mb=512) as ex:
        results = ex.run_many(jobs)
    assert_innocents_answer(results, [0], list(range(4)))
    assert results[0].error_kind == "memory", results[0]


class Killing(Fake):
    """simple_query kills `victim` (once) while the program that asked waits in it for the answer."""

    victim = 0

    def simple_query(self, calls: list) -> list:
        import os
        import signal

        if self.victim:
            os.kill(self.victim, signal.SIGKILL)
            self.victim = 0
            time.sleep(0.3)  # the parent sees the death while this call is still unanswered
        return ["asked" for _ in calls]


def test_a_worker_killed_from_outside_costs_nobody_a_result() -> None:
    asker = Job("def execute_command(image):\n    return ImagePatch(image).simple_query('q')\n", "img0", IMAGE)
    jobs = [innocent(i) for i in range(20)] + [asker] + [innocent(i) for i in range(20, 40)]
    profile = Killing()
    with Executor(profile, workers=1, slots=64, timeout=5.0) as ex:  # all 41 in flight in one worker
        pids = ex.worker_pids()
        profile.victim = pids[0]
        results = ex.run_many(jobs)
        assert profile.victim == 0, "the worker was killed while a program waited in it"
        assert ex.worker_pids() != pids and ex.run(innocent(5)).answer == expected(5)
    assert results[20].answer == "asked", results[20]
    assert [r.answer for r in results[:20] + results[21:]] == [expected(i) for i in range(40)]


def test_generator_functions_still_behave_as_generators() -> None:
    source = ("class Walk:\n    def steps(self, n):\n        for i in range(n):\n            yield i\n"
              "def chain(n):\n    yield from Walk().steps(n)\n    yield (lambda: 7)()\n"
              "def echo():\n    got = yield 0\n    yield got * 2\n"
              "def execute_command(image, query):\n"
              "    e = echo()\n    next(e)\n"
              "    return [list(chain(3)), e.send(21), sum(x for x in chain(4)), query]\n")
    with Executor(Fake(), workers=1) as ex:
        result = ex.run(Job(source, "img0", IMAGE, query="q"))
    assert result.answer == [[0, 1, 2, 7], 42, 13, "q"], result
