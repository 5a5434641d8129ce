"""Restricted compile: escapes are refused before anything runs, with the line number."""

from __future__ import annotations

import pytest

from viprog.executor import check_program


def program(*body: str) -> str:
    return "def execute_command(image):\n" + "\n".join("    " + line for line in body) + "\n"


@pytest.mark.parametrize("source, line", [
    (program("import os", "return 1"), 2),
    (program("from os import path", "return 1"), 2),
    (program("import math, subprocess", "return 1"), 2),
    (program("return __import__('os')"), 2),
    (program("return open('/etc/passwd').read()"), 2),
    (program("x = 1", "return eval('1')"), 3),
    (program("exec('x = 1')", "return 1"), 2),
    (program("return compile('1', 'f', 'eval')"), 2),
    (program("return globals()"), 2),
    (program("return ().__class__.__base__.__subclasses__()"), 2),
    (program("return execute_command.__globals__"), 2),
    (program("return execute_command.__code__"), 2),
    (program("g = (i for i in [1])", "return g.gi_frame.f_back"), 3),
    (program("g = (i for i in [1])", "return g.gi_code"), 3),
    (program("try:", "    1 / 0", "except Exception as e:", "    return e.__traceback__.tb_frame"), 5),
    (program("return '{x}'.format_map({'x': 1})"), 2),
    (program("return type(image)"), 2),
    (program("_secret = 1", "return _secret"), 2),
])
def test_escape_is_a_policy_error_with_its_line(source: str, line: int) -> None:
    result = check_program(source)
    assert result is not None and result.error_kind == "policy"
    assert result.error.startswith(f"line {line}:"), result.error


def test_syntax_error_reports_line() -> None:
    result = check_program("def execute_command(image):\n    x = (1,\n    return x\n")
    assert result is not None and result.error_kind == "syntax" and result.error.startswith("line 2:")


def test_missing_entry_point_is_a_syntax_error() -> None:
    result = check_program("def main(image):\n    return 1\n")
    assert result is not None and result.error_kind == "syntax" and "execute_command" in result.error


def test_non_string_program_is_a_syntax_error() -> None:
    result = check_program(None)  # type: ignore[arg-type]
    assert result is not None and result.error_kind == "syntax"


def test_viper_style_program_passes() -> None:
    source = program(
        "import math",
        "patches = ImagePatch(image).find('cup')",
        "patches.sort(key=lambda p: p.horizontal_center)",
        "n = 0",
        "for i, p in enumerate(patches):",
        "    n += 1",
        "print('found', n)",
        "d = {'a': 1}",
        "d['b'] = 2",
        "return bool_to_yesno(n > 1 and math.sqrt(4) == 2) + ' {}'.format(n)",
    )
    assert check_program(source) is None


def test_a_program_may_name_its_own_variable_like_a_forbidden_builtin() -> None:
    assert check_program(program("type = 'car'", "return type")) is None
