"""Red-team tests of the sandbox: programs written the way a hostile LLM would write them.

Every test asserts the SAFE outcome (the right error kind, no side effect, the pool still
answering the next program). Attacks that currently succeed are kept and marked
`xfail(strict=True)` with the reason, so that fixing the hole turns them into failures
that force the marker to be removed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from viprog.executor import Executor, Job, check_program
from viprog.primitives import Profile

IMAGE = np.zeros((20, 30, 3), np.uint8)
TIMEOUT = 1.0
HEALTHY = "def execute_command(image):\n    return len(ImagePatch(image).find('ok'))\n"


class Fake(Profile):
    name = "fake"

    def find(self, calls: list) -> list:
        return [[[0, 0, 2, 2]] for _ in calls]

    def simple_query(self, calls: list) -> list:
        raise RuntimeError("backend exploded " + "y" * 5000)


def program(*body: str) -> str:
    return "def execute_command(image):\n" + "\n".join("    " + line for line in body) + "\n"


def U(name: str) -> str:
    """A dunder name built at run time, so that the static check cannot see it."""
    return f"'_' + '_{name}__'"


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor(Fake(), workers=2, timeout=TIMEOUT, memory_mb=256, max_primitive_calls=500) as ex:
        yield ex


def run(ex: Executor, source: str):
    result = ex.run(Job(source, "img", IMAGE))
    assert ex.run(Job(HEALTHY, "img", IMAGE)).answer == 1, "the pool must serve the next program"
    return result


# -- escapes seen before anything runs ------------------------------------------------
STATIC_ESCAPES = [
    program("return __builtins__"),
    program("return __builtins__['__import__']('os')"),
    program("return __import__('os').system('id')"),
    program("import importlib", "return 1"),
    program("import os", "return os.environ"),
    program("import math as m, sys", "return 1"),
    program("from math import *", "from os import system", "return 1"),
    program("from . import worker", "return 1"),
    program("return ().__class__.__base__.__subclasses__()"),
    program("return ImagePatch.find.__closure__"),
    program("return bool_to_yesno.__globals__['math']"),
    program("return ImagePatch.__init__.__globals__"),
    program("return execute_command.__code__.co_consts"),
    program("return image.__dict__"),
    program("return f'{image.__class__}'"),
    program("g = (i for i in [1])", "return g.gi_frame.f_back.f_globals"),
    program("g = (i for i in [1])", "return g.gi_code"),
    program("try:", "    1 / 0", "except Exception as e:", "    return e.__traceback__.tb_frame.f_globals"),
    program("try:", "    1 / 0", "except Exception as e:", "    return e.__traceback__"),
    program("return '{x}'.format_map({'x': 1})"),
    program("return int.mro()"),
    program("return type(image).__subclasses__()"),
    program("return vars(image)"), program("return dir(image)"), program("return globals()"),
    program("return locals()"), program("return open('/etc/passwd').read()"), program("return eval('1')"),
    program("exec('x = 1')", "return 1"), program("return compile('1', 'f', 'eval')"),
    program("return help()"), program("return breakpoint()"), program("return input()"),
    program("return exit()"), program("return quit()"), program("return memoryview(b'x')"),
    program("return bytearray(10**10)"), program("return super()"), program("return object"),
    program("return setattr(image, 'id', 'x')"), program("return delattr(image, 'id')"),
    program("return classmethod(len)"), program("return staticmethod(len)"), program("return property(len)"),
    "class M(ImagePatch):\n    def __init_subclass__(cls):\n        pass\n" + program("return 1"),
    "class S(str):\n    def __str__(self):\n        return 'x'\n" + program("return S('a')"),
    "class S(str):\n    def __len__(self):\n        return 0\n" + program("return S('a' * 10**7)"),
    program("match image:", "    case ImagePatch(__class__=c):", "        return str(c)", "return 0"),
    program("try:", "    1 / 0", "except Exception as e:", "    match e:",
            "        case Exception(__traceback__=tb):", "            return str(tb)", "return 0"),
    program("async def f():", "        pass", "return 1"),
    program("_x = 1", "return _x"),
]


@pytest.mark.parametrize("source", STATIC_ESCAPES)
def test_static_escape_is_refused_before_it_runs(executor: Executor, source: str) -> None:
    checked = check_program(source)
    assert checked is not None and checked.error_kind == "policy", checked
    result = run(executor, source)
    assert result.error_kind == "policy" and result.answer is None and result.trace == ()


# -- escapes only visible at run time -------------------------------------------------
RUNTIME_ESCAPES = [
    program(f"return getattr(image, {U('builtins')})"),
    program(f"return getattr(bool_to_yesno, {U('globals')})['math']"),
    program(f"return getattr(getattr(ImagePatch, 'find'), {U('closure')})"),
    program(f"return getattr(getattr(ImagePatch, 'crop'), {U('globals')})"),
    program(f"return getattr(coerce_to_numeric, {U('globals')})['re']"),
    program(f"return getattr(distance, {U('code')})"),
    program(f"return getattr(math, {U('loader')})"),
    program(f"return getattr(math, {U('spec')})"),
    program(f"return getattr(getattr((), {U('class')}), {U('base')})"),
    program(f"return getattr(ImagePatch, {U('subclasses')})()"),
    program(f"return getattr(image, {U('reduce_ex')})(2)"),
    program(f"return getattr(ImagePatch(image), {U('dict')})"),
    program(f"return getattr(print, {U('self')})"),
    program("g = (i for i in [1])", "return getattr(g, 'gi_' + 'frame')"),
    program("g = (i for i in [1])", "return getattr(g, 'gi_' + 'code')"),
    program("try:", "    1 / 0", "except Exception as e:", f"    t = getattr(e, {U('traceback')})", "return 1"),
    program("try:", "    1 / 0", "except Exception as e:", f"    t = getattr(e, {U('context')})", "return 1"),
    program("return [x for x in (1,) if (y := getattr(image, 'gi_' + 'frame'))]"),
    program(f"return (lambda x=getattr(image, {U('class')}): x)()"),
    program("f = getattr", f"return f(image, {U('class')})"),
    program(f"return hasattr(image, {U('class')}) and getattr(image, {U('class')})"),
    program("return ('{0.' + '_' + '_class__}').format(image)"),
    program("return ('{0.' + 'id}').format(image)"),
    program("return ('{0' + '[0]}').format([1])"),
    program("return ('{0:{1.' + 'id}}').format(1, image)"),
    program("f = ('{0.' + '_' + '_class__}').format", "return f(1)"),
    program("return list(map(('{0.' + '_' + '_class__}').format, [1]))"),
    program("return getattr(str, 'format')('{0.x}', 1)"),
    program("return getattr('', 'format' + '_map')({})"),
    program("return getattr(int, 'm' + 'ro')()"),
    program("ImagePatch.find = None", "return 1"),
    program("math.pi = 3", "return 1"),
    program("math.sqrt = len", "return 1"),
    program("bool_to_yesno.x = 1", "return 1"),
    program("image.id = 'other'", "return 1"),
    program("ImagePatch(image).image.id = 'x'", "return 1"),
    "class K:\n    pass\n" + program("K.x = 1", "return 1"),
    "class K(ImagePatch):\n    pass\n" + program("K.find = None", "return 1"),
    program("try:", f"    getattr(image, {U('dict')})", "except BaseException:", "    pass", "return 'no harm'"),
]


@pytest.mark.parametrize("source", RUNTIME_ESCAPES)
def test_runtime_escape_is_a_policy_error(executor: Executor, source: str) -> None:
    result = run(executor, source)
    assert result.error_kind == "policy" and result.answer is None, result


def test_no_escape_leaves_a_side_effect(executor: Executor, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attempts = [
        program("import os", f"os.system('touch {marker}')", "return 1"),
        program(f"return __import__('os').system('touch {marker}')"),
        program(f"return getattr(getattr(ImagePatch, {U('init')}), {U('globals')})['open']('{marker}', 'w')"),
        program(f"return getattr(image, {U('builtins')})['open']('{marker}', 'w')"),
        program(f"return getattr(math, {U('loader')}).load_module('os').system('touch {marker}')"),
        program(f"print('pwned', file=open('{marker}', 'w'))", "return 1"),
        program("return open('/proc/self/environ').read()"),
    ]
    for source in attempts:
        result = run(executor, source)
        assert result.error_kind == "policy" and result.answer is None
    assert not marker.exists()


def test_print_with_a_file_argument_is_discarded(executor: Executor) -> None:
    result = run(executor, program("print('x', file=None, flush=True)", "p = print", "p('y')", "return 1"))
    assert result.answer == 1 and result.error_kind is None


def test_rebinding_names_stays_inside_the_program(executor: Executor) -> None:
    for _ in range(4):  # both workers see it
        result = run(executor, "ImagePatch = None\nmath = None\n" +
                     program("global bool_to_yesno", "bool_to_yesno = 1", "return 1"))
        assert result.answer == 1
    answer = executor.run(Job(program("return [bool_to_yesno(True), math.floor(1.5), len(ImagePatch(image).find('a'))]"),
                              "img", IMAGE)).answer
    assert answer == ["yes", 1, 1]


# -- resource attacks -----------------------------------------------------------------
@pytest.mark.parametrize("body", [
    ("try:", "    while True:", "        pass", "except BaseException:", "    pass", "return 'survived'"),
    ("while True:", "    try:", "        while True:", "            pass", "    finally:", "        pass"),
    ("x = 0", "while True:", "    try:", "        x += 1", "    except BaseException:", "        pass"),
    ("return pow(10, 10**9)",),
    ("return 2 ** (2 ** 40)",),
])
def test_catching_the_timeout_does_not_help(executor: Executor, body: tuple) -> None:
    start = time.monotonic()
    result = run(executor, program(*body))
    assert result.error_kind in ("timeout", "memory") and result.answer is None
    assert time.monotonic() - start < TIMEOUT + 2.0


@pytest.mark.parametrize("body, kind", [
    (("return 'a' * 10**10",), "memory"),
    (("return [[0] * 10**7 for i in range(10**3)]",), "memory"),
    (("raise SystemExit(0)",), "runtime"),
    (("raise KeyboardInterrupt",), "runtime"),
    (("raise MemoryError",), "memory"),
    (("raise GeneratorExit",), "runtime"),
    (("raise ValueError('x ' * 10**6)",), "runtime"),
    (("t = ()", "for i in range(300000):", "    t = (t,)", "return hash(t)"), "crash"),  # C-stack overflow: SIGSEGV
    (("a = []", "for i in range(10**5):", "    a = [a]", "return str(a)"), "runtime"),
])
def test_resource_attack_ends_in_its_error_kind(executor: Executor, body: tuple, kind: str) -> None:
    result = run(executor, program(*body))
    assert result.error_kind == kind and result.answer is None, result
    assert len(result.error) < 500


@pytest.mark.parametrize("body", [("return 10**5000",), ("return [1, 10**5000]",)])
def test_answer_int_too_long_to_print_is_an_output_error_not_a_hang(body: tuple) -> None:
    import threading

    out: list = []
    ex = Executor(Fake(), workers=1, timeout=TIMEOUT, memory_mb=256)
    thread = threading.Thread(target=lambda: out.append(ex.run(Job(program(*body), "img", IMAGE))), daemon=True)
    thread.start()
    thread.join(10)
    assert out, "the pool hung: no result after 10 s"
    ex.close()
    assert out[0].error_kind == "output"


def test_primitive_error_message_is_one_short_line(executor: Executor) -> None:
    result = run(executor, program("try:", "    ImagePatch(image).simple_query('q')", "except Exception:",
                                   "    pass", "return 'caught'"))
    assert result.error_kind == "primitive" and len(result.error) <= 400


@pytest.mark.parametrize("body", [
    ("p = ImagePatch(image)", "p.image = 'other'", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.left = -5", "p.right = 10**6", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: ['other-image', 0, 0, 1, 1]", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: ['img', 0, 0, 1, 10**9]", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: ['img', 0, 0, 1.5, 1]", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: 'img'", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: [[1]]", "return p.find('a')"),
    ("p = ImagePatch(image)", "p.handle = lambda: []", "return p.find('a')"),
])
def test_forged_patch_handles_and_huge_arguments_are_refused(executor: Executor, body: tuple) -> None:
    result = run(executor, program(*body))
    assert result.error_kind in ("primitive", "runtime") and result.answer is None


@pytest.mark.parametrize("handle", ["5", "None", "{'a': 1}"])
def test_forged_non_list_handle_does_not_crash_the_parent(executor: Executor, handle: str) -> None:
    # HEAD's Executor._drain indexed patches[0][1:] unchecked (TypeError in the parent, run_many raised);
    # the working tree of 18:30 UTC no longer crashes: keep it that way
    source = program("p = ImagePatch(image)", f"p.handle = lambda: {handle}", "return p.find('a')")
    results = executor.run_many([Job(source, "img", IMAGE), Job(HEALTHY, "img", IMAGE)])
    assert results[0].error_kind in ("primitive", "runtime") and results[1].answer == 1


def test_huge_primitive_argument_does_not_break_the_pool(executor: Executor) -> None:
    result = run(executor, program("p = ImagePatch(image)", "return len(p.find('x' * 2000000))"))
    assert result.error_kind in (None, "primitive", "runtime")


def test_primitive_arguments_cannot_fill_the_parents_memory(executor: Executor) -> None:
    gc.collect()
    before = set(executor.server.cache)
    source = program("p = ImagePatch(image)", "s = 'x' * 1000000", "for i in range(60):", "    p.find(str(i) + s)",
                     "return 1")
    result = run(executor, source)
    kept = sum(len(k[2]) for k in executor.server.cache if k not in before)
    traced = sum(len(str(c["args"])) for c in result.trace)
    assert kept + traced < 10 * 2**20, f"{(kept + traced) // 2**20} MB of one program's arguments kept by the parent"


# -- output tricks --------------------------------------------------------------------
@pytest.mark.parametrize("source, kind", [
    (program("a = []", "a.append(a)", "return a"), "output"),
    (program("a = {}", "a['a'] = a", "return a"), "output"),
    (program("a = []", "for i in range(1000):", "    a = [a]", "return a"), "output"),
    (program("return {1: 2}"), "output"),
    (program("return {(1, 2): 2}"), "output"),
    (program("return image"), "output"),
    (program("return ImagePatch"), "output"),
    (program("return (i for i in [1])"), "output"),
    (program("return print"), "output"),
    (program("return {1, 2}"), "output"),
    (program("return b'bytes'"), "output"),
    (program("return 1j"), "output"),
    (program("return 'x' * (2 * 10**6)"), "output"),
    (program("return [ImagePatch(image)] * 10**5"), "output"),
    ("class K:\n    pass\n" + program("return K()"), "output"),
    ("class E(Exception):\n    pass\n" + program("return E('x')"), "output"),
])
def test_unsafe_answers_are_output_errors(executor: Executor, source: str, kind: str) -> None:
    result = run(executor, source)
    assert result.error_kind == kind and result.answer is None, result


@pytest.mark.parametrize("source, expected, kind", [
    ("class S(str):\n    pass\n" + program("return S('abc')"), "abc", str),
    ("class I(int):\n    pass\n" + program("return I(3)"), 3, int),
    ("class F(float):\n    pass\n" + program("return F(0.5)"), 0.5, float),
    ("class L(list):\n    pass\n" + program("x = L()", "x.append('a')", "return x"), ["a"], list),
    ("class D(dict):\n    pass\n" + program("d = D()", "d['a'] = 1", "return d"), {"a": 1}, dict),
    (program("return True"), True, bool),
])
def test_answers_reach_the_parent_as_plain_data(executor: Executor, source: str, expected, kind: type) -> None:
    result = run(executor, source)
    assert result.error_kind is None and type(result.answer) is kind and result.answer == expected


def test_nan_and_inf_answers_stay_floats(executor: Executor) -> None:
    result = run(executor, program("return [float('nan'), float('inf'), -float('inf')]"))
    assert result.error_kind is None and all(type(v) is float for v in result.answer)
    assert result.answer[0] != result.answer[0] and result.answer[1:] == [float("inf"), -float("inf")]


def test_returned_image_patch_subclass_cannot_reach_the_parent_as_an_object(executor: Executor) -> None:
    # __eq__ and __init__ are the dunders RestrictedPython lets a class define: they run in the worker only
    result = run(executor, "class P(ImagePatch):\n    def __eq__(self, other):\n        return True\n"
                 + program("return [P(image), P(image) == 1]"))
    assert result.error_kind is None and result.answer[1] is True
    result = run(executor, "class P(ImagePatch):\n    def answer(self):\n        return 1\n" + program("return P(image)"))
    assert result.error_kind is None and type(result.answer) is dict and result.answer["type"] == "ImagePatch"


@pytest.mark.parametrize("source", [
    program("return chr(0) * 400000"),  # 400 kB by the budget, 2.4 MB once JSON escapes it
    program("return '\\u2603' * 400000"),
    program("return '\\\\' * 600000"),  # 600 kB by the budget, 1.2 MB as JSON
    program("p = ImagePatch(image)", "p.to_json = lambda: 'x' * 3000000", "return p"),  # to_json skips _fits
    "class P(ImagePatch):\n    def to_json(self):\n        return 'x' * 3000000\n" + program("return P(image)"),
])
def test_answer_larger_than_the_message_limit_is_an_output_error(executor: Executor, source: str) -> None:
    pids = executor.worker_pids()
    result = run(executor, source)
    assert result.error_kind == "output" and "max_output_bytes" in (result.error or "")
    assert executor.worker_pids() == pids, "a too-large answer must not cost a worker"


def test_forged_image_patch_json_stays_within_the_answer(executor: Executor) -> None:
    result = run(executor, "class P(ImagePatch):\n    def to_json(self):\n        return {'type': 'forged'}\n"
                 + program("return [P(image), 'x']"))
    assert result.error_kind is None and result.answer == [{"type": "forged"}, "x"]


# -- one program must not affect the next -----------------------------------------------
GEN_FINALIZER = ("def gen(box):\n    try:\n        yield 1\n    finally:\n{payload}\n"
                 + program("box = []", "g = gen(box)", "box.append(g)", "next(g)", "return 'done'"))


@pytest.mark.parametrize("payload, kind", [
    ("        try:\n            getattr(box, '_x')\n        except Exception:\n            pass", "policy"),
    ("        while True:\n            pass", "timeout"),
])
def test_leftover_generator_finalizer_is_not_blamed_on_the_next_program(payload: str, kind: str) -> None:
    healthy = program("x = [[i] for i in range(3000)]", "return len(ImagePatch(image).find('a'))")
    with Executor(Fake(), workers=1, timeout=TIMEOUT, memory_mb=256) as ex:
        hostile = ex.run(Job(GEN_FINALIZER.format(payload=payload), "img", IMAGE))
        others = ex.run_many([Job(healthy, "img", IMAGE) for _ in range(4)])
    assert [r.error_kind for r in others] == [None] * 4, [(r.error_kind, r.error) for r in others]
    assert hostile.error_kind in (None, kind)


def test_unbound_format_of_a_str_subclass_is_refused(executor: Executor) -> None:
    result = run(executor, "class S(str):\n    pass\n" + program("return S.format('{0.__class__.__mro__}', 1)"))
    assert result.error_kind == "policy" and result.answer is None


def test_many_hostile_programs_in_one_batch_leave_the_others_alone(executor: Executor) -> None:
    hostile = [program("while True:", "    pass"), program("return 'a' * 10**10"),
               program("t = ()", "for i in range(300000):", "    t = (t,)", "return hash(t)"),
               program(f"return getattr(image, {U('class')})")]
    jobs = [Job(src, "img", IMAGE) for src in hostile] + [Job(HEALTHY, f"i{i}", IMAGE) for i in range(8)]
    results = executor.run_many(jobs)
    assert [r.error_kind for r in results[:4]] == ["timeout", "memory", "crash", "policy"]
    assert [r.answer for r in results[4:]] == [1] * 8
