"""`Executor.run_iter`: results as they finish, so a caller can write them out instead of
holding every one; jobs are read lazily; stopping early leaves the Executor usable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from viprog.executor import Executor, Job
from viprog.primitives import Profile

IMAGE = np.zeros((8, 8, 3), np.uint8)


class Fake(Profile):
    name = "fake"

    def find(self, calls: list) -> list:
        return [[[0, 0, 2, 2]] for _ in calls]

    def simple_query(self, calls: list) -> list:
        time.sleep(1.5)  # a slow model: the program that asks waits, the others go on
        return ["slow" for _ in calls]


def job(i: int) -> Job:
    # later jobs finish sooner: the order of finishing is not the order of the jobs
    spin = max(0, 40 - i) * 20000
    return Job(f"def execute_command(image):\n    x = sum(range({spin}))\n    return {i}\n", f"i{i}", IMAGE)


def test_every_result_once_with_its_index() -> None:
    with Executor(Fake(), workers=2, slots=8) as ex:
        seen = list(ex.run_iter([job(i) for i in range(40)]))
    assert sorted(i for i, _ in seen) == list(range(40))
    assert all(result.answer == i for i, result in seen)


def test_ordered_yields_in_job_order() -> None:
    with Executor(Fake(), workers=2, slots=8) as ex:
        seen = [i for i, r in ex.run_iter((job(i) for i in range(40)), ordered=True) if r.answer == i]
    assert seen == list(range(40))


def test_jobs_are_read_as_workers_have_room() -> None:
    pulled = []

    def jobs() -> Iterator[Job]:
        for i in range(500):
            pulled.append(i)
            yield Job("def execute_command(image):\n    return 1\n", "i", IMAGE)

    with Executor(Fake(), workers=1, slots=4) as ex:
        stream = ex.run_iter(jobs())
        next(stream)
        assert len(pulled) <= 2 * 4 + 1, f"{len(pulled)} jobs read before the first result"
        assert sum(1 for _ in stream) == 499


def test_stopping_early_cancels_the_rest_and_the_executor_goes_on() -> None:
    slow = Job("def execute_command(image):\n    while True:\n        pass\n", "i", IMAGE)
    with Executor(Fake(), workers=1, slots=4, timeout=30) as ex:
        stream = ex.run_iter([job(39), slow, slow, slow])
        assert next(stream)[1].answer == 39
        start = time.monotonic()
        stream.close()
        assert time.monotonic() - start < 5
        assert ex.run(job(7)).answer == 7


def test_one_run_at_a_time() -> None:
    with Executor(Fake(), workers=1) as ex:
        stream = ex.run_iter([job(39), job(38)])
        next(stream)
        with pytest.raises(RuntimeError, match="another run_iter"):
            ex.run(job(1))
        assert [i for i, _ in stream] == [1]
        assert ex.run(job(1)).answer == 1


def test_ordered_results_behind_a_slow_program_stay_bounded() -> None:
    # one slow program, then many finished 200 kB results waiting for it to be yielded first
    pulled = []
    slow = Job("def execute_command(image):\n    return ImagePatch(image).simple_query('q')\n", "i", IMAGE)
    large = Job("def execute_command(image):\n    return 'x' * 200000\n", "i", IMAGE)

    def jobs() -> Iterator[Job]:
        for i in range(400):
            pulled.append(i)
            yield slow if i == 0 else large

    with Executor(Fake(), workers=1, slots=4) as ex:
        stream = ex.run_iter(jobs(), ordered=True)
        first = next(stream)
        assert first[0] == 0 and first[1].answer == "slow"
        assert len(pulled) <= 2 * 4 + 1, f"{len(pulled)} jobs read while the first was slow"
        assert [i for i, r in stream if r.answer == "x" * 200000] == list(range(1, 400))
        count, size = ex.held_high
        assert 1 <= count <= 2 * 4 and size <= 2 * 4 * 201000, ex.held_high
