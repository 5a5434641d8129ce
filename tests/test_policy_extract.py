"""Program extraction: each kind of damage a sampled completion shows is repaired, and
what cannot be repaired comes back as text (the executor calls it `syntax`)."""

from __future__ import annotations

import pytest

from viprog.policy.extract import HEADER, extract_program

BODY = "\n    image_patch = ImagePatch(image)\n    return bool_to_yesno(image_patch.exists('cat'))\n"
PROGRAM = HEADER + BODY


def compiles(source: str) -> bool:
    try:
        compile(source, "<t>", "exec")
    except SyntaxError:
        return False
    return True


def test_body_completion_gets_the_prompts_header():
    assert extract_program(BODY) == PROGRAM


def test_completion_with_its_own_function_keeps_its_header():
    own = "def execute_command(image) -> str:\n    return 'yes'\n"
    assert extract_program(own, "chat") == own


def test_closing_fence_opened_by_the_prompt_ends_the_program():
    assert extract_program(BODY + "```\nThis program checks for a cat.", "chat") == PROGRAM


def test_fenced_block_after_prose_is_taken():
    text = "Sure! Here it is:\n```python\n" + PROGRAM + "```\nHope this helps."
    assert extract_program(text, "chat") == PROGRAM


def test_trailing_chatter_and_next_example_are_dropped():
    text = BODY + "\n\n# Query: Is there a dog?\ndef execute_command(image):\n    return 'no'\nprint(1)\n"
    assert extract_program(text) == PROGRAM


def test_body_written_flush_left_is_indented():
    text = "\nimage_patch = ImagePatch(image)\nreturn 'yes'\n"
    source = extract_program(text.lstrip("\n"))
    assert compiles(source) and "    return 'yes'" in source


def test_first_line_that_lost_its_indent_is_realigned():
    text = "image_patch = ImagePatch(image)\n    patches = image_patch.find('cat')\n    return len(patches)\n"
    source = extract_program(text)
    assert compiles(source) and source.splitlines()[1] == "    image_patch = ImagePatch(image)"


def test_tabs_are_expanded():
    source = extract_program("\n\timage_patch = ImagePatch(image)\n\treturn 'no'\n")
    assert compiles(source) and "\t" not in source


def test_statement_cut_by_the_token_limit_is_dropped():
    text = BODY + "    patches = image_patch.find('dog'"
    assert extract_program(text) == PROGRAM


@pytest.mark.parametrize("junk", ["", "   \n", "))))((((", "    return (\n"])
def test_unrepairable_text_is_returned_not_raised(junk):
    source = extract_program(junk)
    assert isinstance(source, str) and source.startswith(HEADER) and not compiles(source)


def test_raw_style_keeps_a_whole_program_and_its_helpers():
    raw = "def helper(x):\n    return x\n"
    assert extract_program(raw, "raw") == raw


def test_result_always_ends_with_a_newline():
    assert extract_program("    return 'yes'").endswith("'yes'\n")


def test_rest_of_the_header_line_is_dropped_when_it_is_not_code():
    """The completion continues `def execute_command(image):`; a restated return
    annotation or chatter on that line must not cost the program."""
    for first in (" -> str:", " example command"):
        source = extract_program(first + "\n    patch = ImagePatch(image)\n    return 'yes'\n")
        assert compiles(source) and source.startswith("def execute_command(image):\n    patch = ")
    one_line = extract_program(" return 3\n")
    assert compiles(one_line) and "return 3" in one_line
