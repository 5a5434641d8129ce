"""The PrimitiveServer through the Executor: batching across programs, caching, traces,
primitive failures, answers as plain data. Fake profiles record the batches they get."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from viprog.executor import Executor, Job
from viprog.primitives import ImagePatch, Profile
from viprog.primitives.spec import SPECS, primitive

IMAGE = np.zeros((40, 60, 3), np.uint8)


class Recording(Profile):
    """find(name) → one box per letter of `name`; `boom` raises; records every batch."""

    name = "recording"
    unsupported = frozenset({"compute_depth"})

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, tuple[int, ...], tuple]]] = []
        self.lock = threading.Lock()

    def record(self, calls: list) -> None:
        with self.lock:
            self.batches.append([(c.patch.image_id, c.patch.box, c.args) for c in calls])

    def find(self, calls: list) -> list:
        self.record(calls)
        time.sleep(0.005)
        if any(c.args[0] == "boom" for c in calls):
            raise RuntimeError("detector exploded")
        return [[[i, 0, i + 1, 1] for i in range(len(c.args[0]))] for c in calls]

    def simple_query(self, calls: list) -> list:
        self.record(calls)
        return [f"{c.args[0]}@{c.patch.box[2]}x{c.patch.box[3]}" for c in calls]

    @property
    def calls(self) -> list:
        return [c for b in self.batches for c in b]


def program(*body: str, params: str = "image") -> str:
    return f"def execute_command({params}):\n" + "\n".join("    " + line for line in body) + "\n"


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor(Recording(), workers=2, timeout=5, batch_size=8, batch_wait=0.01) as ex:
        yield ex


@pytest.fixture()
def profile(executor: Executor) -> Recording:
    executor.profile.batches.clear()  # type: ignore[attr-defined]
    executor.server.clear_cache()
    return executor.profile  # type: ignore[return-value]


def test_calls_from_many_programs_share_batches(executor: Executor, profile: Recording) -> None:
    jobs = [Job(program("return len(ImagePatch(image).find('cat'))"), f"img{i}", IMAGE) for i in range(32)]
    results = executor.run_many(jobs)
    assert [r.answer for r in results] == [3] * 32
    sizes = [len(b) for b in profile.batches]
    assert sum(sizes) == 32 and max(sizes) <= 8 and len(sizes) < 16, sizes


def test_identical_calls_reach_the_model_once(executor: Executor, profile: Recording) -> None:
    jobs = [Job(program("p = ImagePatch(image)", "return len(p.find('dog')) + len(p.find('dog'))"), "same", IMAGE)
            for _ in range(20)]
    assert [r.answer for r in executor.run_many(jobs)] == [6] * 20
    assert len(profile.calls) == 1


def test_cache_key_includes_box_and_arguments(executor: Executor, profile: Recording) -> None:
    source = program("p = ImagePatch(image)", "q = p.crop(0, 0, 10, 10)",
                     "return [p.simple_query('a'), p.simple_query('b'), q.simple_query('a'), p.simple_query('a')]")
    result = executor.run(Job(source, "k", IMAGE))
    assert result.answer == ["a@60x40", "b@60x40", "a@10x10", "a@60x40"]
    assert len(profile.calls) == 3


def test_without_cache_every_call_reaches_the_model() -> None:
    with Executor(Recording(), workers=1, cache=False, batch_size=4) as ex:
        ex.run_many([Job(program("return len(ImagePatch(image).find('dog'))"), "same", IMAGE)] * 6)
        assert len(ex.profile.calls) == 6  # type: ignore[attr-defined]


def test_trace_lists_calls_in_order_with_handle_boxes(executor: Executor, profile: Recording) -> None:
    source = program("p = ImagePatch(image)", "cats = p.find('ab')", "return cats[1].simple_query('what?')")
    result = executor.run(Job(source, "t", IMAGE))
    assert result.ok and result.answer == "what?@2x1"
    assert [(t["primitive"], t["box"], t["args"]) for t in result.trace] == [
        ("find", [0, 0, 60, 40], ["ab"]), ("simple_query", [1, 0, 2, 1], ["what?"])]
    assert result.trace[0]["result"] == [[0, 0, 1, 1], [1, 0, 2, 1]]


def test_backend_exception_fails_only_its_own_call(executor: Executor, profile: Recording) -> None:
    good = program("return len(ImagePatch(image).find('ok'))")
    bad = program("return len(ImagePatch(image).find('boom'))")
    results = executor.run_many([Job(good, f"g{i}", IMAGE) for i in range(6)] + [Job(bad, "b", IMAGE)])
    assert [r.answer for r in results[:6]] == [2] * 6
    assert results[6].error_kind == "primitive" and "detector exploded" in results[6].error


def test_primitive_missing_from_profile_is_a_primitive_error(executor: Executor) -> None:
    result = executor.run(Job(program("return ImagePatch(image).compute_depth()"), "d", IMAGE))
    assert result.error_kind == "primitive" and "recording" in result.error


def test_caught_primitive_failure_is_still_reported(executor: Executor) -> None:
    source = program("try:", "    ImagePatch(image).compute_depth()", "except Exception:", "    pass", "return 'guess'")
    result = executor.run(Job(source, "d", IMAGE))
    assert result.error_kind == "primitive" and result.answer is None


def test_forged_patch_handle_is_refused(executor: Executor, profile: Recording) -> None:
    source = program("class Other:", "    id = 'someone-else'", "    width = 60", "    height = 40",
                     "p = ImagePatch(image)", "p.image = Other()", "return p.find('x')")
    result = executor.run(Job(source, "mine", IMAGE))
    assert result.error_kind == "primitive" and "invalid patch handle" in result.error
    assert profile.calls == []


def test_query_is_the_second_argument(executor: Executor) -> None:
    result = executor.run(Job(program("return query.upper()", params="image, query"), "q", IMAGE, query="how many?"))
    assert result.answer == "HOW MANY?"


def test_patch_answers_become_plain_data(executor: Executor) -> None:
    result = executor.run(Job(program("return ImagePatch(image).find('abc')[1:]"), "p", IMAGE))
    assert [a["box"] for a in result.answer] == [[1, 39, 2, 40], [2, 39, 3, 40]]
    assert all(a["type"] == "ImagePatch" and a["image_id"] == "p" for a in result.answer)


@pytest.mark.parametrize("expr", ["{1, 2}", "ImagePatch", "lambda: 1", "{1: 'a'}"])
def test_non_json_answer_is_an_output_error(executor: Executor, expr: str) -> None:
    assert executor.run(Job(program(f"return {expr}"), "o", IMAGE)).error_kind == "output"


def test_results_come_back_in_job_order(executor: Executor) -> None:
    slow = "    x = 0\n    for i in range({n}):\n        x += 1\n"
    jobs = [Job(f"def execute_command(image):\n{slow.format(n=(7 - i % 7) * 20000)}    return {i}\n", "o", IMAGE)
            for i in range(30)]
    assert [r.answer for r in executor.run_many(jobs)] == list(range(30))


def test_each_image_is_loaded_once_per_run(executor: Executor) -> None:
    loads = []

    def load() -> np.ndarray:
        loads.append(1)
        return IMAGE

    jobs = [Job(program("return ImagePatch(image).simple_query('w')"), "lazy", load) for _ in range(10)]
    assert [r.answer for r in executor.run_many(jobs)] == ["w@60x40"] * 10
    assert len(loads) == 1


def test_unreadable_image_fails_only_its_job(executor: Executor, tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    ok = program("return 1")
    results = executor.run_many([Job(ok, "bad", bad), Job(ok, "good", IMAGE)])
    assert results[0].error_kind == "primitive" and "bad.png" in results[0].error and results[1].answer == 1


@pytest.fixture()
def user_primitive() -> Iterator[str]:
    """A primitive registered in the parent only (as a user's plugin would be); removed after."""

    def count_letters(self, word: str) -> int:
        """Returns the number of letters of word found in the patch."""

    primitive(count_letters)
    yield "count_letters"
    SPECS.pop("count_letters")
    delattr(ImagePatch, "count_letters")


def test_primitive_registered_in_parent_works_in_sandbox(user_primitive: str) -> None:
    class Letters(Profile):
        name = "letters"

        def count_letters(self, calls: list) -> list:
            return [len(c.args[0]) for c in calls]

    with Executor(Letters(), workers=1) as ex:
        result = ex.run(Job(program("return ImagePatch(image).count_letters(word='abcd')"), "u", IMAGE))
    assert result.answer == 4 and result.trace[0]["primitive"] == "count_letters"


def test_batch_runs_at_once_when_every_program_waits() -> None:
    with Executor(Recording(), workers=1, batch_size=64, batch_wait=30.0) as ex:
        start = time.monotonic()
        results = ex.run_many([Job(program("return len(ImagePatch(image).find('ab'))"), f"w{i}", IMAGE)
                               for i in range(5)])
        assert [r.answer for r in results] == [2] * 5 and time.monotonic() - start < 5.0
        assert [len(b) for b in ex.profile.batches] == [5]  # type: ignore[attr-defined]
